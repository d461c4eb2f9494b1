#!/bin/sh
# Makes the webhook's TLS material with openssl, no cert-manager needed: a private CA and a serving
# certificate, signed by it, for the webhook's Service (middlebox-webhook.<namespace>.svc).
#
#   k8s/webhook/make-tls.sh DIR [NAMESPACE] [DAYS]
#
# writes DIR/ca.crt, DIR/ca.key, DIR/tls.crt and DIR/tls.key (keys readable by you only). Then
# (k8s/README.md): the Secret middlebox-webhook-tls from tls.crt and tls.key, and ca.crt as the
# MutatingWebhookConfiguration's caBundle. Renewing: run it again on the same DIR to keep the CA
# and get a new serving certificate; only a new CA needs a new caBundle.
set -eu

dir=${1:?usage: make-tls.sh DIR [NAMESPACE] [DAYS]}
namespace=${2:-middlebox-system}
days=${3:-365}
service=middlebox-webhook
host="$service.$namespace.svc"

command -v openssl >/dev/null 2>&1 || { echo "make-tls.sh: openssl is needed" >&2; exit 1; }
mkdir -p "$dir"
umask 077
conf="$dir/openssl.cnf"
trap 'rm -f "$conf" "$dir/tls.csr"' EXIT

# Our own configuration, so that the system's openssl.cnf adds no extensions of its own.
cat > "$conf" <<CONF
[req]
distinguished_name = subject
prompt = no
[subject]
CN = $host
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
# The API server checks the name it dials against the subjectAltName, never the CN.
subjectAltName = DNS:$host, DNS:$host.cluster.local, DNS:$service.$namespace
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CONF

if [ ! -s "$dir/ca.crt" ] || [ ! -s "$dir/ca.key" ]; then
  openssl req -x509 -new -nodes -newkey rsa:2048 -sha256 -days 3650 \
    -config "$conf" -extensions ca -subj "/CN=middlebox-webhook-ca" \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
fi
openssl req -new -nodes -newkey rsa:2048 -sha256 -config "$conf" \
  -keyout "$dir/tls.key" -out "$dir/tls.csr" 2>/dev/null
openssl x509 -req -sha256 -days "$days" -in "$dir/tls.csr" \
  -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
  -extfile "$conf" -extensions server -out "$dir/tls.crt" 2>/dev/null
chmod 600 "$dir/ca.key" "$dir/tls.key"
chmod 644 "$dir/ca.crt" "$dir/tls.crt"
echo "made $dir/tls.crt for $host (signed by $dir/ca.crt) and $dir/tls.key"
