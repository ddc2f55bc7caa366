# /etc/profile.d/kruxos-sdk.sh: the KruxOS Python SDK for login shells.
# Puts /opt/kruxos/sdk/python on PYTHONPATH once (however often this is sourced) and sets KRUXOS_HOST
# (localhost:<gateway port>, from /etc/kruxos/sdk.env) unless it is already set. Safe under `set -u`.
# The system python3 imports kruxos without this too (kruxos-sdk.pth in its dist-packages); this file
# serves other Pythons (venvs) and tools that read KRUXOS_HOST.

case ":${PYTHONPATH-}:" in
    *:/opt/kruxos/sdk/python:*) ;;
    *) PYTHONPATH="/opt/kruxos/sdk/python${PYTHONPATH:+:$PYTHONPATH}" ;;
esac
export PYTHONPATH

if [ -z "${KRUXOS_HOST-}" ] && [ -r /etc/kruxos/sdk.env ]; then
    KRUXOS_HOST="$(sed -n 's/^KRUXOS_HOST=//p' /etc/kruxos/sdk.env)"
    export KRUXOS_HOST
fi
