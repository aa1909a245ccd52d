# The image rayjob.yaml runs (head and GPU workers): latentmill on the Ray image of the Ray version
# rayjob.yaml names, with s3fs and gcsfs for object-store inputs and stores.
#   docker build -t YOUR_REGISTRY/latentmill:0.1.0 . && docker push YOUR_REGISTRY/latentmill:0.1.0
# tests/test_kuberay.py keeps this file's Ray version, Python and tag equal to rayjob.yaml's.
FROM rayproject/ray:2.60.0-py311-gpu

WORKDIR /opt/latentmill
COPY --chown=ray:users pyproject.toml constraints.txt README.md ./
COPY --chown=ray:users pipeline ./pipeline
COPY --chown=ray:users jobs ./jobs
COPY --chown=ray:users latentmill ./latentmill
# the image's own Ray satisfies the project's range and stays; torch as CI tests it (constraints.txt)
RUN pip install --no-cache-dir -c constraints.txt . s3fs gcsfs \
    && python -c "import latentmill, pipeline, torch, ray; print('latentmill on ray', ray.__version__)"
