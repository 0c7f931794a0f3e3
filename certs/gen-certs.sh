#!/bin/sh
# Generate the mutual-TLS files for jwsd and jws with openssl: two separate CAs (one vouches for
# the server, one for users), a server certificate, and one client certificate per user.
# ECDSA P-256 keys; certificates valid 365 days at most. See certs/README.md for who reads what.
set -eu

usage() {
    cat <<'EOF'
usage: gen-certs.sh OUTDIR [USER...]

Writes mutual-TLS files for jobworker into OUTDIR (created if needed):
  OUTDIR/server_ca_cert.pem            CA that vouches for the server (clients read it)
  OUTDIR/server_cert.pem, server_key.pem   the server's certificate (CN localhost,
                                       SAN localhost and 127.0.0.1) and key (jwsd reads them)
  OUTDIR/client_ca_cert.pem            CA that vouches for users (jwsd reads it)
  OUTDIR/USER/client_cert.pem, client_key.pem   one pair per user, CN = USER (jws reads them)
  OUTDIR/ca/                           the two CA private keys (mode 0700); jwsd never needs them
Every private key is mode 0600. USERs default to: alex betty admin. A user name is
[a-z_][a-z0-9_.-]* and not "ca".

Running it again keeps both CAs and only issues what is missing or expired, so
`gen-certs.sh OUTDIR carol` later adds the user carol and changes nothing else.
Certificates are valid for 365 days at most (never beyond their CA's end).
To start over, move OUTDIR aside and run again.
EOF
}

die() {
    printf 'gen-certs.sh: %s\n' "$*" >&2
    exit 1
}

case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    "" | -*) usage >&2; exit 2 ;;
esac
out=$1
shift
if [ "$#" -eq 0 ]; then
    set -- alex betty admin
fi
for user in "$@"; do
    case "$user" in
        ca) die "\"ca\" cannot be a user name: OUTDIR/ca holds the CA keys; choose another name" ;;
    esac
    if ! printf '%s\n' "$user" | grep -Eqx '[a-z_][a-z0-9_.-]*'; then
        die "bad user name \"$user\": use lower-case letters, digits, '_', '.' and '-', starting with a letter or '_'"
    fi
done
command -v openssl >/dev/null 2>&1 || die "openssl is not installed; install it (apt-get install openssl)"

DAYS=365
umask 077
if [ ! -d "$out" ]; then
    # readable by all: it holds the CA certificates every client needs; keys have their own modes
    mkdir -p "$out"
    chmod 0755 "$out"
fi
mkdir -p "$out/ca"
chmod 0700 "$out/ca"
work=$(mktemp -d "$out/.gen-certs.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

# new_key PATH: an ECDSA P-256 private key (PKCS#8 PEM), mode 0600 (umask 077).
new_key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null \
        || die "openssl could not make a P-256 key"
}

# valid_for SECONDS CERT: true when CERT is still valid SECONDS from now.
valid_for() {
    openssl x509 -checkend "$1" -noout -in "$2" >/dev/null 2>&1
}

# days_left CERT: whole days CERT stays valid, capped at DAYS (0 when expired).
days_left() {
    lo=0
    hi=$DAYS
    # the usual cases first: a CA older than a day, and one made moments ago
    for days in $DAYS $((DAYS - 1)); do
        if valid_for $((days * 86400)) "$1"; then
            echo "$days"
            return
        fi
    done
    # binary search: valid for lo days, not for hi days
    while [ $((hi - lo)) -gt 1 ]; do
        mid=$(((lo + hi) / 2))
        if valid_for $((mid * 86400)) "$1"; then lo=$mid; else hi=$mid; fi
    done
    echo "$lo"
}

# make_ca NAME LABEL: OUTDIR/NAME_ca_cert.pem and OUTDIR/ca/NAME_ca_key.pem, unless both exist.
make_ca() {
    cert="$out/${1}_ca_cert.pem"
    key="$out/ca/${1}_ca_key.pem"
    if [ -f "$cert" ] && [ -f "$key" ]; then
        valid_for 86400 "$cert" \
            || die "$cert expires within a day or has expired; move $out aside and run again to start over"
        return
    fi
    if [ -f "$cert" ] || [ -f "$key" ]; then
        die "only one of $cert and $key exists; restore the other, or move $out aside and run again"
    fi
    cat >"$work/ca.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = $2
[ext]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
    new_key "$work/ca_key.pem"
    openssl req -new -x509 -config "$work/ca.cnf" -extensions ext -key "$work/ca_key.pem" \
        -sha256 -days "$DAYS" -set_serial "0x$(openssl rand -hex 16)" -out "$work/ca_cert.pem" \
        || die "openssl could not make the $2"
    chmod 0644 "$work/ca_cert.pem"
    mv "$work/ca_key.pem" "$key"
    mv "$work/ca_cert.pem" "$cert"
    echo "made $cert (key in $key)"
}

# issue CA_NAME CN USAGE SAN CERT KEY PURPOSE DAYS: a leaf certificate signed by that CA, valid
# DAYS, unless CERT and KEY exist and CERT is still valid for a day.
issue() {
    ca_cert="$out/${1}_ca_cert.pem"
    ca_key="$out/ca/${1}_ca_key.pem"
    cert=$5
    key=$6
    days=$8
    if [ -f "$cert" ] && [ -f "$key" ] && valid_for 86400 "$cert"; then
        return
    fi
    cat >"$work/leaf.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = $2
[ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = $3
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
    if [ -n "$4" ]; then
        echo "subjectAltName = $4" >>"$work/leaf.cnf"
    fi
    new_key "$work/leaf_key.pem"
    openssl req -new -config "$work/leaf.cnf" -key "$work/leaf_key.pem" -out "$work/leaf.csr" \
        || die "openssl could not make a request for $2"
    openssl x509 -req -in "$work/leaf.csr" -CA "$ca_cert" -CAkey "$ca_key" \
        -set_serial "0x$(openssl rand -hex 16)" -sha256 -days "$days" \
        -extfile "$work/leaf.cnf" -extensions ext -out "$work/leaf_cert.pem" 2>/dev/null \
        || die "openssl could not sign the certificate for $2"
    openssl verify -CAfile "$ca_cert" -purpose "$7" "$work/leaf_cert.pem" >/dev/null \
        || die "the new certificate for $2 does not verify against $ca_cert"
    chmod 0644 "$work/leaf_cert.pem"
    # key first: a cert beside a key that is not its own would make jwsd refuse to start
    mv "$work/leaf_key.pem" "$key"
    mv "$work/leaf_cert.pem" "$cert"
    echo "made $cert ($days days)"
}

# A new CA would not vouch for certificates its predecessor issued: refuse rather than leave
# certificates behind that nothing accepts.
if [ ! -f "$out/server_ca_cert.pem" ] && [ -f "$out/server_cert.pem" ]; then
    die "$out/server_cert.pem exists but its CA does not; move $out aside and run again"
fi
if [ ! -f "$out/client_ca_cert.pem" ]; then
    for existing in "$out"/*/client_cert.pem; do
        [ -f "$existing" ] && die "$existing exists but its CA does not; move $out aside and run again"
    done
fi

make_ca server "jobworker server CA"
make_ca client "jobworker client CA"
# A leaf never outlives its CA: it would be refused from then on anyway.
server_days=$(days_left "$out/server_ca_cert.pem")
client_days=$(days_left "$out/client_ca_cert.pem")
issue server localhost serverAuth "DNS:localhost, IP:127.0.0.1" \
    "$out/server_cert.pem" "$out/server_key.pem" sslserver "$server_days"
for user in "$@"; do
    mkdir -p "$out/$user"
    chmod 0700 "$out/$user"
    issue client "$user" clientAuth "" \
        "$out/$user/client_cert.pem" "$out/$user/client_key.pem" sslclient "$client_days"
done
