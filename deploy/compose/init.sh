#!/bin/sh
# One-shot init service of compose.yaml: each organization's CA, node and admin
# certificates, node.toml, policy and database, in the shared volume. Idempotent: an
# organization that exists already is left alone.
set -eu
ROOT=/var/lib/verbund
for org in acme globex fixit; do
    dir="$ROOT/$org"
    if [ -f "$dir/node.toml" ]; then
        echo "init: $org exists"
        continue
    fi
    verbund init --org "$org" --dir "$dir" \
        --listen 0.0.0.0:7443 --ops-listen 0.0.0.0:9464 --dns "$org" \
        --database-url "postgres://verbund@postgres:5432/$org"
    # Who the partners are to this organization's policy (policies/README.md): the two
    # companies are partners of each other, fixit is the service provider (supplier).
    case "$org" in
        acme) printf 'g2, globex, partner\ng2, fixit, supplier\n' >> "$dir/policy/policy.csv" ;;
        globex) printf 'g2, acme, partner\ng2, fixit, supplier\n' >> "$dir/policy/policy.csv" ;;
        fixit) printf 'g2, acme, partner\ng2, globex, partner\n' >> "$dir/policy/policy.csv" ;;
    esac
    echo "init: $org created"
done
