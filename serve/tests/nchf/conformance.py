#!/usr/bin/env python3
"""Nchf_ConvergedCharging conformance of a running `tollgate serve`, checked against 3GPP's
own OpenAPI documents (TS 32.291 and TS 29.571, in ./openapi).

Every request this suite sends as valid is validated against the specification before it is
sent, and every response is validated against the specification's response for its status
(content type, schema, formats). Requests that are meant to be wrong are checked to be refused
by the validator too, so the suite knows it is testing what it thinks it is.

    conformance.py BASE_URL

The node must serve the manifest `cli/tests/cli/nchf.rs` writes: rating group 100 (voice,
time, 2 a second), 200 (data, volume, quota 1048576), 300 (roaming: a geo-fenced offer), 400
(video, time), 500 (sms, service-specific units).
Accounts are opened over the native API, which this suite does not validate.

Prints one JSON line: {"requests": N, "responses": M, "cases": C, "failures": [...]}; exits 1
when anything failed.
"""

import json
import pathlib
import sys
import traceback

import requests
import yaml
from openapi_core import Config, OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse

HERE = pathlib.Path(__file__).resolve().parent
SPEC = HERE / "openapi" / "TS32291_Nchf_ConvergedCharging.yaml"
PREFIX = "/nchf-convergedcharging/v3"


class Suite:
    def __init__(self, base):
        self.base = base.rstrip("/")
        spec = yaml.safe_load(SPEC.read_text())
        # The documents name their server `{apiRoot}/nchf-convergedcharging/v3`; this node is it.
        spec["servers"] = [{"url": self.base + PREFIX}]
        config = Config(
            # Checking the whole document would follow every reference into 90 other files;
            # the schemas these messages use are resolved as they are reached.
            spec_validator_cls=None,
            extra_media_type_deserializers={"application/problem+json": json.loads},
        )
        self.openapi = OpenAPI.from_dict(spec, config=config, base_uri=SPEC.as_uri())
        self.http = requests.Session()
        self.requests = 0
        self.responses = 0
        self.cases = 0
        self.failures = []

    # -- plumbing ---------------------------------------------------------------------------

    def native(self, path, body):
        """A native-API call setting up accounts (not part of Nchf, not validated)."""
        r = self.http.post(self.base + path, json=body)
        if r.status_code != 200:
            raise AssertionError(f"setting up {path}: {r.status_code} {r.text}")

    def account(self, subscriber, minor_units, currency="EUR"):
        path = f"/v1/commands/account/{subscriber}"
        self.native(path, {"id": f"open-{subscriber}", "command": {"open": {"currency": currency}}})
        if minor_units:
            amount = {"minor_units": minor_units, "currency": currency}
            self.native(path, {"id": f"top-{subscriber}", "command": {"top-up": {"amount": amount}}})

    def post(self, path, body=None, status=200, valid=True, raw=None, content_type="application/json"):
        """Sends a request (validated first when `valid`, else checked to be invalid), checks
        the status and validates the response against the specification."""
        data = raw if raw is not None else json.dumps(body)
        prepared = self.http.prepare_request(
            requests.Request("POST", self.base + PREFIX + path, data=data, headers={"Content-Type": content_type})
        )
        spec_request = RequestsOpenAPIRequest(prepared)
        if valid:
            self.openapi.validate_request(spec_request)
            self.requests += 1
        else:
            try:
                self.openapi.validate_request(spec_request)
            except Exception:
                pass
            else:
                raise AssertionError(f"the request meant to be wrong is valid: {data}")
        response = self.http.send(prepared)
        if response.status_code != status:
            raise AssertionError(f"POST {path}: expected {status}, got {response.status_code}: {response.text}")
        self.openapi.validate_response(spec_request, RequestsOpenAPIResponse(response))
        self.responses += 1
        return response

    def case(self, name, run):
        self.cases += 1
        try:
            run()
        except Exception as e:  # a failed case is reported, and the others still run
            self.failures.append({"case": name, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()})

    # -- messages ---------------------------------------------------------------------------

    @staticmethod
    def request(sequence, usage, subscriber=None, **extra):
        body = {
            "nfConsumerIdentification": {
                "nodeFunctionality": "SMF",
                "nFName": "5b0c3f52-0000-4000-8000-000000000001",
                "nFPLMNID": {"mcc": "001", "mnc": "01"},
            },
            "invocationTimeStamp": "2026-12-01T10:00:00.000Z",
            "invocationSequenceNumber": sequence,
            "multipleUnitUsage": usage,
        }
        if subscriber is not None:
            body["subscriberIdentifier"] = subscriber
        body.update(extra)
        return body

    def create(self, subscriber, usage, status=201, **extra):
        response = self.post("/chargingdata", self.request(0, usage, subscriber, **extra), status=status)
        if status != 201:
            return None, response
        location = response.headers["Location"]
        if not location.startswith("http") or f"{PREFIX}/chargingdata/" not in location:
            raise AssertionError(f"Location {location}")
        return location.rsplit("/", 1)[1], response.json()

    @staticmethod
    def info(answer, rating_group):
        for i in answer.get("multipleUnitInformation", []):
            if i["ratingGroup"] == rating_group:
                return i
        raise AssertionError(f"no answer for rating group {rating_group}: {answer}")

    # -- cases ------------------------------------------------------------------------------

    def voice_session(self):
        imsi = "imsi-001010000000101"
        self.account(imsi, 10_000)
        ref, created = self.create(imsi, [{"ratingGroup": 100, "requestedUnit": {"time": 60}}])
        grant = self.info(created, 100)
        assert grant["resultCode"] == "SUCCESS" and grant["grantedUnit"] == {"time": 60}, created
        assert grant["validityTime"] > 0, created
        assert created["invocationTimeStamp"] != "2026-12-01T10:00:00.000Z", "the CHF's own time"
        used = [{"localSequenceNumber": 1, "time": 40}]
        update = self.request(1, [{"ratingGroup": 100, "usedUnitContainer": used, "requestedUnit": {"time": 60}}], imsi)
        first = self.post(f"/chargingdata/{ref}/update", update).json()
        assert self.info(first, 100)["usageCharge"]["chargedMinorUnits"] == 80, first
        again = self.post(f"/chargingdata/{ref}/update", dict(update, retransmissionIndicator=True)).json()
        assert again == first, (first, again)
        final = [{"ratingGroup": 100, "usedUnitContainer": [{"localSequenceNumber": 2, "time": 10}]}]
        self.post(f"/chargingdata/{ref}/release", self.request(2, final, imsi), status=204)
        self.post(f"/chargingdata/{ref}/release", self.request(2, final, imsi, retransmissionIndicator=True), status=204)
        self.post(f"/chargingdata/{ref}/update", self.request(3, [], imsi), status=404)

    def data_and_voice_session(self):
        imsi = "imsi-001010000000102"
        self.account(imsi, 100_000_000)
        usage = [{"ratingGroup": 100, "requestedUnit": {"time": 30}}, {"ratingGroup": 200, "requestedUnit": {}}]
        ref, created = self.create(imsi, usage)
        assert self.info(created, 200)["grantedUnit"] == {"totalVolume": 1048576}, created
        assert self.info(created, 100)["grantedUnit"] == {"time": 30}, created
        smf = {"localSequenceNumber": 1, "time": 20, "totalVolume": 5000, "uplinkVolume": 1000, "downlinkVolume": 4000,
               "triggers": [{"triggerType": "VALIDITY_TIME", "triggerCategory": "IMMEDIATE_REPORT"}]}
        update = self.request(1, [
            {"ratingGroup": 100, "usedUnitContainer": [smf], "requestedUnit": {"time": 30}},
            {"ratingGroup": 200, "usedUnitContainer": [smf], "requestedUnit": {"totalVolume": 2000000}},
        ])
        answer = self.post(f"/chargingdata/{ref}/update", update).json()
        assert self.info(answer, 100)["usageCharge"]["usedUnits"] == 20, answer
        assert self.info(answer, 200)["usageCharge"]["usedUnits"] == 5000, answer
        assert self.info(answer, 200)["grantedUnit"] == {"totalVolume": 2000000}, answer
        self.post(f"/chargingdata/{ref}/release", self.request(2, []), status=204)

    def usage_over_the_grant(self):
        imsi = "imsi-001010000000103"
        self.account(imsi, 10_000)
        ref, _ = self.create(imsi, [{"ratingGroup": 100, "requestedUnit": {"time": 60}}])
        used = [{"localSequenceNumber": 1, "time": 61}]
        answer = self.post(f"/chargingdata/{ref}/update", self.request(1, [{"ratingGroup": 100, "usedUnitContainer": used}])).json()
        charge = self.info(answer, 100)
        assert charge["resultCode"] == "SUCCESS" and charge["usageCharge"]["chargedMinorUnits"] == 122, answer
        self.post(f"/chargingdata/{ref}/release", self.request(2, []), status=204)

    def result_codes(self):
        poor, dollars, fenced = "imsi-001010000000104", "imsi-001010000000105", "imsi-001010000000106"
        self.account(poor, 0)
        self.account(dollars, 1_000, currency="USD")
        self.account(fenced, 1_000)
        _, answer = self.create(poor, [{"ratingGroup": 100, "requestedUnit": {"time": 60}}, {"ratingGroup": 7, "requestedUnit": {"time": 1}}])
        assert self.info(answer, 100)["resultCode"] == "QUOTA_LIMIT_REACHED", answer
        assert self.info(answer, 7)["resultCode"] == "RATING_FAILED", answer
        # An offer priced in another currency than the account cannot be rated for it.
        _, answer = self.create(dollars, [{"ratingGroup": 100, "requestedUnit": {"time": 60}}])
        assert self.info(answer, 100)["resultCode"] == "RATING_FAILED", answer
        _, answer = self.create(fenced, [{"ratingGroup": 300, "requestedUnit": {"time": 60}}])
        assert self.info(answer, 300)["resultCode"] == "END_USER_SERVICE_REJECTED", answer

    def retransmitted_create(self):
        imsi = "imsi-001010000000107"
        self.account(imsi, 10_000)
        usage = [{"ratingGroup": 400, "requestedUnit": {"time": 10}}]
        ref, first = self.create(imsi, usage)
        again, second = self.create(imsi, usage, retransmissionIndicator=True)
        assert (again, second) == (ref, first), (ref, again)
        self.post(f"/chargingdata/{ref}/release", self.request(1, []), status=204)

    def errors(self):
        imsi = "imsi-001010000000108"
        self.account(imsi, 10_000)
        ref, _ = self.create(imsi, [{"ratingGroup": 100, "requestedUnit": {"time": 60}}])

        def problem(response, cause):
            if response.json().get("cause") != cause:
                raise AssertionError(f"expected cause {cause}: {response.text}")
            return response

        # Unknown subscriber: 404 USER_UNKNOWN, and no charging data.
        r = self.post("/chargingdata", self.request(0, [{"ratingGroup": 100, "requestedUnit": {"time": 1}}], "imsi-001019999999999"), status=404)
        problem(r, "USER_UNKNOWN")
        # Unknown charging data.
        problem(self.post("/chargingdata/0123456789abcdef/update", self.request(1, []), status=404), "CONTEXT_NOT_FOUND")
        # A mandatory IE missing (invocationSequenceNumber): named.
        missing = self.request(1, [])
        del missing["invocationSequenceNumber"]
        r = self.post(f"/chargingdata/{ref}/update", missing, status=400, valid=False)
        problem(r, "MANDATORY_IE_MISSING")
        assert "invocationSequenceNumber" in r.json()["detail"], r.text
        container = self.request(1, [{"ratingGroup": 100, "usedUnitContainer": [{"time": 3}]}])
        problem(self.post(f"/chargingdata/{ref}/update", container, status=400, valid=False), "MANDATORY_IE_MISSING")
        # One rating group twice (valid against the schema, refused by the CHF).
        twice = self.request(1, [{"ratingGroup": 100, "requestedUnit": {"time": 1}}, {"ratingGroup": 100, "requestedUnit": {"time": 2}}])
        r = self.post(f"/chargingdata/{ref}/update", twice, status=400)
        problem(r, "MANDATORY_IE_INCORRECT")
        assert "multipleUnitUsage[1].ratingGroup" in r.json()["detail"], r.text
        # Not JSON; not declared as JSON.
        problem(self.post(f"/chargingdata/{ref}/update", raw="{\"invocation", status=400, valid=False), "INVALID_MSG_FORMAT")
        r = self.post(f"/chargingdata/{ref}/update", raw=json.dumps(self.request(1, [])), status=415, valid=False, content_type="text/plain")
        problem(r, "UNSUPPORTED_MEDIA_TYPE")
        # A step answered, then sent again with other content: a conflict, never the original.

        def used(n):
            return [{"ratingGroup": 100, "usedUnitContainer": [{"localSequenceNumber": 1, "time": n}],
                     "requestedUnit": {"time": 60}}]

        self.post(f"/chargingdata/{ref}/update", self.request(1, used(10)))
        r = self.post(f"/chargingdata/{ref}/update", self.request(1, used(50), retransmissionIndicator=True), status=409)
        problem(r, "INVOCATION_SEQUENCE_NUMBER_CONFLICT")
        # Another subscriber than the session's.
        r = self.post(f"/chargingdata/{ref}/update", self.request(2, [], "imsi-001010000000101"), status=400)
        problem(r, "MANDATORY_IE_INCORRECT")
        self.post(f"/chargingdata/{ref}/release", self.request(2, []), status=204)

    def service_units(self):
        imsi = "imsi-001010000000109"
        self.account(imsi, 1_000)
        ref, created = self.create(imsi, [{"ratingGroup": 500, "requestedUnit": {"serviceSpecificUnits": 3}}])
        assert self.info(created, 500)["grantedUnit"] == {"serviceSpecificUnits": 3}, created
        used = [{"localSequenceNumber": 1, "serviceSpecificUnits": 2}]
        update = self.request(1, [{"ratingGroup": 500, "usedUnitContainer": used, "requestedUnit": {}}])
        answer = self.post(f"/chargingdata/{ref}/update", update).json()
        assert self.info(answer, 500)["grantedUnit"] == {"serviceSpecificUnits": 60}, answer
        final = [{"ratingGroup": 500, "usedUnitContainer": [{"localSequenceNumber": 2, "serviceSpecificUnits": 1}]}]
        self.post(f"/chargingdata/{ref}/release", self.request(2, final), status=204)
        # Released: the charging data is gone.
        self.post(f"/chargingdata/{ref}/update", self.request(3, []), status=404)

    def unpaid_usage(self):
        imsi = "imsi-001010000000110"
        self.account(imsi, 10)
        ref, created = self.create(imsi, [{"ratingGroup": 100, "requestedUnit": {"time": 60}}])
        assert self.info(created, 100)["grantedUnit"] == {"time": 5}, created
        used = [{"localSequenceNumber": 1, "time": 8}]
        update = self.request(1, [{"ratingGroup": 100, "usedUnitContainer": used, "requestedUnit": {"time": 60}}])
        answer = self.post(f"/chargingdata/{ref}/update", update).json()
        info = self.info(answer, 100)
        assert info["usageCharge"]["chargedMinorUnits"] == 10 and info["usageCharge"]["unpaidMinorUnits"] == 6, answer
        assert info["resultCode"] == "QUOTA_LIMIT_REACHED", answer
        self.post(f"/chargingdata/{ref}/release", self.request(2, []), status=204)

    def too_large(self):
        imsi = "imsi-001010000000111"
        body = self.request(0, [{"ratingGroup": 100, "requestedUnit": {"time": 60}}], imsi)
        body["serviceSpecificationInfo"] = "x" * (1 << 20)
        self.post("/chargingdata", body, status=413)

    def run(self):
        for name in ["voice_session", "data_and_voice_session", "usage_over_the_grant", "result_codes",
                     "retransmitted_create", "errors", "service_units", "unpaid_usage", "too_large"]:
            self.case(name, getattr(self, name))
        print(json.dumps({"requests": self.requests, "responses": self.responses, "cases": self.cases,
                          "failures": self.failures}))
        return 1 if self.failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(Suite(sys.argv[1]).run())
