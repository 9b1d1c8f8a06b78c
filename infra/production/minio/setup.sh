#!/bin/sh
# MinIO set-up for tanren, the only place the MinIO root account is used:
# creates the bucket, and the MinIO user tanren workers connect as, with a
# policy of its own that allows object operations on that bucket and nothing
# else: get, put, delete and list objects, multipart uploads. No bucket
# creation or deletion, no other bucket, no administration.
#
# Safe to rerun: it re-applies the policy, resets the user's secret to the one
# given, and detaches any other policy from the user (such as `readwrite`).
#
# Runs as the one-shot minio-init service of compose.yaml (minio/minio image,
# which ships mc), and from `infra/dev up` (mc from `infra/install-tools mc`).
# By hand, against any MinIO (mc on PATH):
#   (set -a; . secrets/minio.env; . secrets/s3.credentials; set +a
#    MINIO_ENDPOINT=http://127.0.0.1:9000 TANREN_BUCKET=tanren sh minio/setup.sh)
#
# Environment:
#   MINIO_ENDPOINT                              S3 API URL, e.g. http://minio:9000
#   MINIO_ROOT_USER, MINIO_ROOT_PASSWORD        the root account
#   TANREN_S3_ACCESS_KEY, TANREN_S3_SECRET_KEY  the workers' user (created or updated)
#   TANREN_BUCKET                               bucket (default tanren)
#   MC                                          mc executable (default mc)
# Secrets reach mc through its environment (MC_HOST_<alias>) and stdin, never
# its command line, and are never printed.
set -eu

mc="${MC:-mc}"
endpoint="${MINIO_ENDPOINT:?MINIO_ENDPOINT is not set}"
root_user="${MINIO_ROOT_USER:?MINIO_ROOT_USER is not set}"
root_password="${MINIO_ROOT_PASSWORD:?MINIO_ROOT_PASSWORD is not set}"
user="${TANREN_S3_ACCESS_KEY:?TANREN_S3_ACCESS_KEY (the MinIO user of the workers) is not set}"
secret="${TANREN_S3_SECRET_KEY:?TANREN_S3_SECRET_KEY is not set}"
bucket="${TANREN_BUCKET:-tanren}"
alias=tanrensetup
# One policy per user, named after it: re-running with another bucket moves
# the user to that bucket instead of adding a second one.
policy="$user"

say() { printf '[minio-setup] %s\n' "$*"; }
die() { printf '[minio-setup] error: %s\n' "$*" >&2; exit 1; }

case "$endpoint" in http://* | https://*) ;; *) die "MINIO_ENDPOINT=$endpoint: expected http://host:port or https://host:port" ;; esac
case "$endpoint" in *@*) die "MINIO_ENDPOINT: give the URL without credentials" ;; esac
# mc splits MC_HOST_<alias> at ':' and '@' without decoding.
case "$root_user$root_password" in *:*) die "MINIO_ROOT_USER/MINIO_ROOT_PASSWORD must not contain ':'" ;; esac
case "$user" in
  "$root_user") die "TANREN_S3_ACCESS_KEY is the MinIO root user: give the workers a user of their own (infra/production/init-secrets writes one into secrets/s3.credentials)" ;;
  *[!A-Za-z0-9._-]*) die "TANREN_S3_ACCESS_KEY may hold only letters, digits, '.', '_' and '-'" ;;
esac
[ "${#user}" -ge 3 ] || die "TANREN_S3_ACCESS_KEY must be at least 3 characters"
[ "${#secret}" -ge 8 ] || die "TANREN_S3_SECRET_KEY must be at least 8 characters"
case "$secret" in *"
"*) die "TANREN_S3_SECRET_KEY must be one line" ;; esac
case "$bucket" in
  *[!a-z0-9.-]* | [.-]* | *[.-]) die "TANREN_BUCKET=$bucket is not a valid bucket name (lower-case letters, digits, '.', '-')" ;;
esac
[ "${#bucket}" -ge 3 ] && [ "${#bucket}" -le 63 ] || die "TANREN_BUCKET=$bucket: a bucket name has 3 to 63 characters"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# mc keeps its configuration here (not in ~/.mc) and finds the alias in its
# environment, so the root secret is never written to disk.
export MC_CONFIG_DIR="$tmp/mc"
export MC_HOST_tanrensetup="${endpoint%%://*}://$root_user:$root_password@${endpoint#*://}"

# Runs mc quietly; on failure shows its output. A MinIO that has just started
# may answer before its IAM subsystem is ready, so each step is retried.
run_mc() { # what mc-arguments...
  what="$1"; shift
  tries=0
  while :; do
    if out="$("$mc" --no-color "$@" </dev/null 2>&1)"; then return 0; fi
    tries=$((tries + 1))
    [ "$tries" -lt 10 ] || { printf '%s\n' "$out" >&2; die "$what failed"; }
    sleep 1
  done
}

# The secret goes through stdin: `mc admin user add ALIAS USER` reads it there.
add_user() {
  tries=0
  while :; do
    if out="$(printf '%s\n' "$secret" | "$mc" --no-color admin user add "$alias" "$user" 2>&1)"; then return 0; fi
    tries=$((tries + 1))
    [ "$tries" -lt 10 ] || { printf '%s\n' "$out" >&2; die "creating user $user failed"; }
    sleep 1
  done
}

run_mc "creating bucket $bucket" mb --ignore-existing "$alias/$bucket"

# ListBucket also answers HeadBucket (the workers' "does the bucket exist").
cat >"$tmp/policy.json" <<EOF
{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"],
      "Resource": ["arn:aws:s3:::$bucket"]
    },
    {
      "Effect": "Allow",
      "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
      "Resource": ["arn:aws:s3:::$bucket/*"]
    }
  ]
}
EOF
run_mc "creating policy $policy" admin policy create "$alias" "$policy" "$tmp/policy.json"
add_user
run_mc "attaching policy $policy to $user" admin policy attach "$alias" "$policy" --user "$user"

# Policies attached earlier (e.g. readwrite, by an older set-up) would widen
# the user's rights: detach every one but its own.
run_mc "reading user $user" admin user info "$alias" "$user" --json
attached=""
case "$out" in *'"policyName":"'*)
  attached="${out#*\"policyName\":\"}"
  attached="${attached%%\"*}" ;;
esac
old_ifs="$IFS"; IFS=,
for p in $attached; do
  IFS="$old_ifs"
  [ -z "$p" ] || [ "$p" = "$policy" ] || {
    run_mc "detaching policy $p from $user" admin policy detach "$alias" "$p" --user "$user"
    say "detached policy $p from user $user"
  }
done
IFS="$old_ifs"

say "bucket $bucket ready; user $user may only read, write, list and delete objects in it"
