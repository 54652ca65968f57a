# SoLU Neuron Explorer: CPU-only image that runs `solu demo` (default) or `solu app` on a database.
#   docker build -t solu-explorer .
#   docker run -p 8501:8501 -v solu-demo:/home/solu/demo solu-explorer
#   docker run -p 8501:8501 -v "$PWD/runs:/data" solu-explorer app --db /data/index.duckdb --host 0.0.0.0
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false

# the CPU build of torch first, at the version pyproject.toml pins, so `pip install .`
# finds it satisfied and never pulls the multi-GB CUDA wheels
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /src
COPY pyproject.toml README.md ./
COPY solu ./solu
COPY index ./index
COPY explorer ./explorer
RUN pip install . && rm -rf /src

RUN useradd --create-home --uid 1000 solu
USER solu
WORKDIR /home/solu
RUN mkdir -p /home/solu/demo

EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=20m \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4)"
ENTRYPOINT ["solu"]
CMD ["demo", "--out", "/home/solu/demo", "--host", "0.0.0.0", "--port", "8501"]
