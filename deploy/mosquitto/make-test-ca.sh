#!/usr/bin/env bash
# Make a throw-away CA, a broker certificate (for localhost, 127.0.0.1 and the compose name
# "broker") and one client certificate per name given (CN = the name: an edge id or cloud-N).
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
for name in "$@"; do
  printf 'extendedKeyUsage=clientAuth\n' > "$name.ext"
  sign "$name" "$name.ext"
done
echo "CA, broker and client certificates ($*) in $out"
