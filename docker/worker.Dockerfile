# The GPU worker image: CUDA torch from the PyTorch base image, then Obliviate.
# One container per GPU; each job runs in a fresh child process (core.queue).
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    OBLIVIATE_HOME=/var/lib/obliviate HF_HOME=/var/lib/obliviate/hf
RUN useradd --create-home --uid 1000 obliviate \
    && mkdir -p /var/lib/obliviate /var/lib/obliviate-keys \
    && chown obliviate /var/lib/obliviate /var/lib/obliviate-keys

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY api ./api
COPY core ./core
COPY worker ./worker
COPY cli ./cli
COPY migrations ./migrations
# torch>=2.3 in pyproject.toml is already satisfied by the base image's CUDA build.
# The deepspeed extra: jobs with resources.strategy: deepspeed (pip builds it without
# compiling any op; tried on CPU only, where ZeRO-3 with the engine's AdamW needed none
# but a communication op DeepSpeed compiles at first use).
RUN pip install '.[deepspeed]'

USER obliviate
CMD ["obliviate", "worker"]
