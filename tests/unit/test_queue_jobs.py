"""The job message and result record: what the queue carries and what GET /result answers."""

from __future__ import annotations

import uuid

import numpy as np
import orjson
import pytest

from service.queue.jobs import Job, JobResult, JobStatus, PoisonJob, decode_job, is_inference_id


def body(**fields: object) -> bytes:
    return orjson.dumps({"schema": "lab2prod-job/1", "inference_id": str(uuid.uuid4()), **fields})


def test_a_job_round_trips_through_its_message_body():
    job = Job.create(np.arange(784, dtype=np.int64).reshape(28, 28).astype(np.uint8))
    back = decode_job(job.encode())
    assert back.inference_id == job.inference_id
    assert uuid.UUID(back.inference_id).version == 4
    np.testing.assert_array_equal(back.image, job.image)
    assert back.submitted_at == pytest.approx(job.submitted_at)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2, 3]", "not a JSON object"),
        (orjson.dumps({"schema": "lab2prod-job/1", "pixels": [0] * 784}), "inference_id"),
        (orjson.dumps({"schema": "other", "inference_id": str(uuid.uuid4())}), "schema"),
        (body(pixels_b64="AAAA"), "784 bytes"),
        (body(pixels_b64="not base64!"), "not valid base64"),
        (body(pixels=[0] * 784), "missing"),
        (body(pixels_b64=[1, 2, 3]), "missing"),
    ],
)
def test_a_malformed_message_is_poison_and_says_why(message, reason):
    with pytest.raises(PoisonJob, match=reason):
        decode_job(message)


def test_a_poison_message_keeps_the_id_from_its_properties():
    known = str(uuid.uuid4())
    with pytest.raises(PoisonJob) as caught:
        decode_job(b"\xff garbage", message_id=known)
    assert caught.value.inference_id == known


def test_only_canonical_uuids_are_inference_ids():
    assert is_inference_id(str(uuid.uuid4()))
    assert not is_inference_id("../../etc/passwd")
    assert not is_inference_id(uuid.uuid4().hex)  # not canonical form


def test_public_bodies_follow_the_contract_for_each_status():
    iid = str(uuid.uuid4())
    assert JobResult.pending(iid).public() == {"inference_id": iid, "status": "pending"}
    probabilities = np.array([0.1, 0.0, 0.7, 0.2] + [0.0] * 6)
    done = JobResult.done(iid, probabilities, "v3", attempts=1).public()
    assert done == {
        "inference_id": iid,
        "status": "done",
        "predicted_class": 2,
        "confidence": pytest.approx(0.7),
        "model_version": "v3",
    }
    failed = JobResult.failed(iid, "bad pixels", attempts=3).public()
    assert failed == {"inference_id": iid, "status": "failed", "error": "bad pixels"}


def test_a_result_record_round_trips_through_json():
    record = JobResult.done(str(uuid.uuid4()), np.eye(10)[4], "v1", attempts=2)
    back = JobResult.from_json(record.to_json())
    assert back == record
    assert back.status is JobStatus.DONE and back.final
