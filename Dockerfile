# reid_tao on the official PyTorch CUDA runtime image.
#   docker build -t reid_tao .
#   docker run --gpus all -v /data:/data -v $PWD/results:/workspace/results reid_tao train -e specs/market1501.yaml
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

WORKDIR /workspace
COPY pyproject.toml README.md ./
COPY reid_tao ./reid_tao
COPY specs ./specs
COPY scripts ./scripts
RUN pip install --no-cache-dir .

ENTRYPOINT ["reid"]
CMD ["--help"]
