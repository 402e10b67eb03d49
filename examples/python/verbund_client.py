#!/usr/bin/env python3
"""A Verbund client in Python: gRPC over mutual TLS with stubs generated from proto/.

The stubs are generated at run time with grpcio-tools into a temporary directory, so the
example always matches the node's .proto files and nothing generated is checked in.

    python3 -m venv .venv && .venv/bin/pip install -r examples/python/requirements.txt
    .venv/bin/python examples/python/verbund_client.py \\
        --endpoint 127.0.0.1:7443 --ca acme/ca/ca.crt \\
        --cert acme/users/admin.crt --key acme/users/admin.key

It creates an account and two opportunities, lists the opportunities of the account in one
stage (a filter), moves one to another stage with a field mask (only the masked field
changes), and follows the change stream (Watch) until it has seen those changes.
"""

import argparse
import importlib
import pathlib
import sys
import tempfile

from importlib.resources import files as resource_files

import grpc
from grpc_tools import protoc

REPO = pathlib.Path(__file__).resolve().parents[2]


def generate_stubs(proto_dir: pathlib.Path, out_dir: pathlib.Path) -> None:
    """Runs protoc (bundled with grpcio-tools) over every .proto file of the node."""
    well_known = str(resource_files("grpc_tools") / "_proto")
    sources = sorted(str(p.relative_to(proto_dir)) for p in proto_dir.rglob("*.proto"))
    args = [
        "protoc",
        f"-I{proto_dir}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *sources,
    ]
    if protoc.main(args) != 0:
        sys.exit(f"protoc failed on {proto_dir}")
    # The generated modules import each other as packages (verbund.v1.common_pb2).
    for d in [p for p in out_dir.rglob("*") if p.is_dir()] + [out_dir]:
        (d / "__init__.py").touch()


def channel(endpoint: str, ca: str, cert: str, key: str) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=pathlib.Path(ca).read_bytes(),
        private_key=pathlib.Path(key).read_bytes(),
        certificate_chain=pathlib.Path(cert).read_bytes(),
    )
    return grpc.secure_channel(endpoint, creds)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", required=True, help="host:port of the node")
    ap.add_argument("--ca", required=True, help="CA certificate that issued the node's")
    ap.add_argument("--cert", required=True, help="client certificate (PEM)")
    ap.add_argument("--key", required=True, help="client private key (PEM)")
    ap.add_argument("--proto-dir", default=str(REPO / "proto"))
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="verbund-stubs-") as gen:
        generate_stubs(pathlib.Path(args.proto_dir), pathlib.Path(gen))
        sys.path.insert(0, gen)
        common = importlib.import_module("verbund.v1.common_pb2")
        crm = importlib.import_module("verbund.v1.crm_pb2")
        crm_grpc = importlib.import_module("verbund.v1.crm_pb2_grpc")
        from google.protobuf import field_mask_pb2

        ch = channel(args.endpoint, args.ca, args.cert, args.key)
        node = crm_grpc.NodeServiceStub(ch)
        accounts = crm_grpc.AccountServiceStub(ch)
        opps = crm_grpc.OpportunityServiceStub(ch)
        changes = crm_grpc.ChangeServiceStub(ch)

        me = node.WhoAmI(crm.WhoAmIRequest(), timeout=30)
        print(f"connected as {me.kind} {me.name} of {me.org} to {me.node_org}/{me.node_name}")

        acc = accounts.CreateAccount(
            crm.CreateAccountRequest(
                account=crm.Account(name="Python Client GmbH", country_code="DE")
            ),
            timeout=30,
        )
        acc_id = acc.meta.id
        # Changes after this one are ours (the node may hold other records already).
        after_seq = acc.meta.seq
        print(f"created account {acc.name}")

        made = {}
        for name, stage in [
            ("Pilot", crm.OPPORTUNITY_STAGE_PROSPECTING),
            ("Rollout", crm.OPPORTUNITY_STAGE_PROPOSAL),
        ]:
            opp = opps.CreateOpportunity(
                crm.CreateOpportunityRequest(
                    opportunity=crm.Opportunity(
                        account_id=acc_id, name=name, stage=stage, probability=20
                    )
                ),
                timeout=30,
            )
            made[name] = opp.meta.id
            print(
                f"created opportunity {opp.name} "
                f"{crm.OpportunityStage.Name(opp.stage)}"
            )

        listed = opps.ListOpportunities(
            crm.ListOpportunitiesRequest(
                account_id=acc_id, stage=crm.OPPORTUNITY_STAGE_PROPOSAL
            ),
            timeout=30,
        )
        names = ",".join(o.name for o in listed.opportunities)
        print(f"listed in OPPORTUNITY_STAGE_PROPOSAL: {names}")

        # Only `stage` is in the mask: the name and probability sent here are ignored.
        updated = opps.UpdateOpportunity(
            crm.UpdateOpportunityRequest(
                id=made["Pilot"],
                opportunity=crm.Opportunity(
                    stage=crm.OPPORTUNITY_STAGE_NEGOTIATION, name="ignored", probability=99
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["stage"]),
            ),
            timeout=30,
        )
        print(
            f"updated {updated.name}: {crm.OpportunityStage.Name(updated.stage)}, "
            f"probability {updated.probability}"
        )

        # The change stream from just after the account: our two creates and the update.
        stream = changes.Watch(
            crm.WatchRequest(
                after_seq=after_seq, kinds=[common.RECORD_KIND_OPPORTUNITY]
            ),
            timeout=30,
        )
        ids = {v: k for k, v in made.items()}
        seen = 0
        for event in stream:
            if event.record_id not in ids:
                continue
            print(
                f"watched {crm.ChangeOp.Name(event.op)} {ids[event.record_id]} "
                f"{','.join(sorted(event.changed_fields))}"
            )
            seen += 1
            if seen == 3:
                stream.cancel()
                break
        ch.close()
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
