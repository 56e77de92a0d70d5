# canary-operator image: the operator, the waiter (canary-operator wait) and the
# kubectl plugin, on a slim Python base. Runs as a non-root user and works with a
# read-only root filesystem (no bytecode is written at run time).
#   docker build -t canary-operator:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip install --no-cache-dir --prefix=/install . \
 && python -m compileall -q /install

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /install /usr/local
# A fixed numeric user, as the manifests' runAsUser (and restricted Pod Security) expect.
RUN groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin nonroot
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["canary-operator"]
CMD ["run", "--leader-elect", "--http-port=8080", "--log-format=json"]
