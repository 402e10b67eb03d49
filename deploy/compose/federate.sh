#!/bin/sh
# One-shot federate service of compose.yaml, once the nodes are healthy: every organization
# pins every other one (its CA, checked against the fingerprint, and its endpoint) through
# its own node's admin API. In a real federation each administrator does this for the
# partners it chose, with the CA file and fingerprint it got from the partner out of band.
set -eu
ROOT=/var/lib/verbund
ORGS="acme globex fixit"
for org in $ORGS; do
    verbund ca export --config "$ROOT/$org/node.toml" > "/tmp/$org-ca.crt" 2> "/tmp/$org-ca.txt"
done
for host in $ORGS; do
    for partner in $ORGS; do
        [ "$host" = "$partner" ] && continue
        fingerprint=$(tail -n 1 "/tmp/$partner-ca.txt" | sed 's/.*: //')
        if verbund partner add --config "$ROOT/$host/node.toml" --node "https://$host:7443" \
            --org "$partner" --ca "/tmp/$partner-ca.crt" \
            --endpoint "https://$partner:7443" --fingerprint "$fingerprint" 2> /tmp/err.txt; then
            echo "federate: $host pins $partner"
        elif grep -q "exists already" /tmp/err.txt; then
            echo "federate: $host pinned $partner before"
        else
            cat /tmp/err.txt >&2
            exit 1
        fi
    done
done
