# moto's S3 server where compose expects MinIO, and an `mc` for minio-init (benchmark only).
FROM python:3.11.14-slim-bookworm
RUN pip install --no-cache-dir "moto[server]==5.2.5" "boto3==1.44.5"
COPY minio.sh /usr/local/bin/minio
COPY mc.py /usr/local/bin/mc
RUN chmod 755 /usr/local/bin/minio /usr/local/bin/mc
ENTRYPOINT ["minio"]
