# jobledger: one image for every role. `docker run IMAGE` runs them all (`jobledger up`);
# `docker run IMAGE jobledger worker` (or api, dispatcher, ...) runs one role.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir ledger consumers projections api jobledger \
    && touch ledger/__init__.py consumers/__init__.py projections/__init__.py \
             api/__init__.py jobledger/__init__.py \
    && pip install . \
    && pip uninstall -y jobledger \
    && rm -rf ledger consumers projections api jobledger

COPY ledger ledger
COPY consumers consumers
COPY projections projections
COPY api api
COPY jobledger jobledger
RUN pip install --no-deps . && useradd --create-home --uid 10001 jobledger

USER jobledger
EXPOSE 8000
# `up` passes SIGTERM on to every role and waits for workers to drain
# (JOBLEDGER_SHUTDOWN_GRACE_S); give `docker stop -t` at least that plus 10 s.
STOPSIGNAL SIGTERM
CMD ["jobledger", "up", "--host", "0.0.0.0", "--port", "8000"]
