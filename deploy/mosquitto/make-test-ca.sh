#!/usr/bin/env bash
# Make a throw-away CA, a broker certificate (for localhost, 127.0.0.1 and the compose name
# "broker"), a console certificate (HTTPS of the cloud workers: localhost, 127.0.0.1, cloud-1,
# cloud-2) and one client certificate per name given (CN = the name: an edge id or cloud-N).
# For tests and trials only; production uses the plant's PKI.
#   deploy/mosquitto/make-test-ca.sh OUT_DIR edge-1 cloud-1 cloud-2
set -euo pipefail
out=${1:?usage: make-test-ca.sh OUT_DIR CLIENT...}
shift
mkdir -p "$out"
cd "$out"
days=825
if [ ! -f ca.key ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
    -subj "/CN=fabpm test CA" -keyout ca.key -out ca.crt 2>/dev/null
fi
sign() {  # name, extensions file
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
    -keyout "$1.key" -out "$1.csr" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" \
    -extfile "$2" -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$2"
  chmod 600 "$1.key"
}
printf 'subjectAltName=DNS:localhost,DNS:broker,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > broker.ext
sign broker broker.ext
# The console and API (HTTPS) of the compose file's workers, and of a worker on this host.
printf 'subjectAltName=DNS:localhost,DNS:cloud-1,DNS:cloud-2,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > console.ext
sign console console.ext
for name in "$@"; do
  printf 'extendedKeyUsage=clientAuth\n' > "$name.ext"
  sign "$name" "$name.ext"
done
echo "CA, broker, console and client certificates ($*) in $out"
