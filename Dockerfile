# Greenroom image for users with a registry: the model server by default; the same image
# runs the API (`greenroom api`) and workers (`greenroom worker`) with another command.
# Offline machines build an equivalent model-server image with `python -m launch.image build`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    MODEL_SERVER_HOST=0.0.0.0 \
    MODEL_SERVER_PORT=8080

WORKDIR /app

# torch first, from the CPU-only index (the `model` extra pins the same version), so
# this large layer is cached across source changes and pulls no CUDA wheels.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

COPY pyproject.toml ./
COPY schemas ./schemas
COPY db ./db
COPY edge ./edge
COPY service ./service
COPY gateway ./gateway
COPY launch ./launch
COPY greenroom_client ./greenroom_client
COPY worker ./worker
COPY model_server ./model_server
RUN pip install ".[model,onnx,tracing]" \
    && useradd --create-home --uid 10001 greenroom

USER greenroom
EXPOSE 8080
CMD ["python", "-m", "model_server"]
