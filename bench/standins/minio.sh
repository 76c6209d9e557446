#!/bin/sh
# `minio server /data --console-address :9001` -> moto's S3 server on :9000 (the arguments are ignored)
exec moto_server -H 0.0.0.0 -p 9000
