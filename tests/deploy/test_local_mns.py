"""The local MNS server, driven by the unmodified aliyun-mns-sdk."""

from __future__ import annotations

import base64
import hashlib
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mns.account import Account
from mns.message_property import (
    MessagePropertyValue,
    MessageSystemPropertyValue,
    SystemPropertyName,
)
from mns.mns_client import MNSClient
from mns.mns_exception import MNSServerException
from mns.queue import Message, Queue, QueueMeta

from agentqueue.deploy.local import mns_protocol
from agentqueue.deploy.local.mns import LocalMNS
from tests.waiting import wait_until

NS = "{http://mns.aliyuncs.com/doc/v1/}"

# QueueMeta's message counts are deprecated in the SDK, yet MNS still returns them.
pytestmark = pytest.mark.filterwarnings("ignore:Call to deprecated function:DeprecationWarning")


@pytest.fixture
def mns(tmp_path: Path) -> Iterator[LocalMNS]:
    server = LocalMNS(tmp_path / "mns.db")
    with server:
        yield server


def connections_to(port: int) -> int:
    """Established TCP connections whose server end is 127.0.0.1:`port` (from /proc/net/tcp)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 01: ESTABLISHED
            count += 1
    return count


def make_queue(mns: LocalMNS, name: str = "jobs", **meta: int) -> Queue:
    queue = mns.account().get_queue(name)
    queue.create(QueueMeta(**meta))
    return queue


def server_error(call, *args) -> MNSServerException:
    with pytest.raises(MNSServerException) as caught:
        call(*args)
    return caught.value


def md5_upper(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest().upper()


# --------------------------------------------------------------------------- queues


def test_creating_a_queue_returns_its_url_and_creating_it_again_alike_succeeds(mns):
    queue = mns.account().get_queue("jobs")

    assert queue.create(QueueMeta(vis_timeout=10)) == f"{mns.endpoint}/queues/jobs"
    assert queue.create(QueueMeta(vis_timeout=10)) == f"{mns.endpoint}/queues/jobs"


def test_creating_an_existing_queue_with_other_attributes_fails_with_queue_already_exist(mns):
    make_queue(mns, vis_timeout=10)

    error = server_error(mns.account().get_queue("jobs").create, QueueMeta(vis_timeout=20))

    assert error.type == "QueueAlreadyExist"
    assert "visibility_timeout=10" in error.message


def test_a_queue_name_mns_would_refuse_is_refused(mns):
    error = server_error(mns.account().get_queue("agent.requests").create, QueueMeta())

    assert error.type == "InvalidQueueName"
    assert "'agent.requests'" in error.message


def test_queue_attributes_report_settings_and_messages_by_state(mns):
    queue = make_queue(mns, vis_timeout=60, polling_wait_sec=3, max_msg_size=2048)
    queue.send_message(Message("active"))
    queue.send_message(Message("delayed", delay_seconds=60))
    queue.send_message(Message("to be received"))
    queue.receive_message(0)

    meta = queue.get_attributes()

    assert meta.queue_name == "jobs"
    assert (meta.visibility_timeout, meta.polling_wait_seconds) == (60, 3)
    assert (meta.maximum_message_size, meta.delay_seconds) == (2048, 0)
    assert meta.message_retention_period == 345600
    assert meta.logging_enabled is False
    assert (meta._active_messages, meta._inactive_messages, meta._delay_messages) == (1, 1, 1)
    assert meta.create_time <= meta.last_modify_time


def test_setting_attributes_changes_only_the_attributes_given(mns):
    queue = make_queue(mns, vis_timeout=60, delay_sec=0)

    queue.set_attributes(QueueMeta(delay_sec=5))

    meta = queue.get_attributes()
    assert (meta.visibility_timeout, meta.delay_seconds) == (60, 5)


def test_listing_queues_filters_by_prefix_and_pages_with_the_next_marker(mns):
    for name in ["a-1", "a-2", "a-3", "b-1"]:
        make_queue(mns, name)
    account = mns.account()

    first, marker = account.list_queue(prefix="a-", ret_number=2)
    rest, last_marker = account.list_queue(prefix="a-", ret_number=2, marker=marker)

    assert first == [f"{mns.endpoint}/queues/a-1", f"{mns.endpoint}/queues/a-2"]
    assert rest == [f"{mns.endpoint}/queues/a-3"]
    assert last_marker == ""


def test_a_deleted_queue_answers_queue_not_exist_and_deleting_it_again_succeeds(mns):
    queue = make_queue(mns)
    queue.send_message(Message("gone with the queue"))

    queue.delete()
    queue.delete()

    assert server_error(queue.receive_message, 0).type == "QueueNotExist"
    assert server_error(queue.send_message, Message("x")).type == "QueueNotExist"


# --------------------------------------------------------------------------- messages


@pytest.mark.parametrize("base64_on", [True, False], ids=["base64", "raw"])
def test_a_message_round_trips_with_base64_encoding_on_and_off(mns, base64_on):
    queue = make_queue(mns, vis_timeout=30)
    queue.set_encoding(base64_on)
    text = 'agent <call> & "tool" — 工具'
    wire = base64.b64encode(text.encode()).decode() if base64_on else text

    sent = queue.send_message(Message(text))
    received = queue.receive_message(0)

    body = received.message_body.decode() if base64_on else received.message_body
    assert body == text
    assert sent.message_body_md5 == received.message_body_md5 == md5_upper(wire)
    assert received.message_id == sent.message_id
    assert received.dequeue_count == 1
    assert received.priority == 8
    assert received.first_dequeue_time >= received.enqueue_time > 1_000_000_000_000
    assert received.next_visible_time - received.first_dequeue_time == 30_000
    queue.delete_message(received.receipt_handle)
    assert server_error(queue.receive_message, 0).type == "MessageNotExist"


def test_batch_send_receive_and_delete_handle_several_messages_at_once(mns):
    queue = make_queue(mns)
    bodies = [f"task {i}" for i in range(5)]

    sent = queue.batch_send_message([Message(body) for body in bodies])
    received = queue.batch_receive_message_with_str_body(16, 0)
    queue.batch_delete_message([m.receipt_handle for m in received])

    assert [m.message_body for m in received] == bodies
    assert [m.message_id for m in received] == [m.message_id for m in sent]
    assert len({m.receipt_handle for m in received}) == 5
    assert server_error(queue.batch_receive_message, 16, 0).type == "MessageNotExist"


def test_messages_are_delivered_by_priority_then_in_send_order(mns):
    queue = make_queue(mns)
    for body, priority in [("low", 16), ("first", 8), ("urgent", 1), ("second", 8)]:
        queue.send_message(Message(body, priority=priority))

    received = queue.batch_receive_message_with_str_body(16, 0)

    assert [m.message_body for m in received] == ["urgent", "first", "second", "low"]


def test_batch_delete_reports_each_stale_handle_and_deletes_the_rest(mns):
    queue = make_queue(mns, vis_timeout=30)
    queue.batch_send_message([Message("a"), Message("b")])
    first, second = queue.batch_receive_message(2, 0)
    stale = first.receipt_handle
    queue.change_message_visibility(stale, 30)

    error = server_error(queue.batch_delete_message, [stale, second.receipt_handle])

    assert error.type == "MessageNotExist"
    assert [e["ReceiptHandle"] for e in error.sub_errors] == [stale]
    assert queue.get_attributes()._inactive_messages == 1


def test_an_empty_queue_raises_message_not_exist_after_the_long_poll(mns):
    queue = make_queue(mns)

    error = server_error(queue.receive_message, 1)

    assert error.type == "MessageNotExist"
    assert error.req_id


def test_peek_shows_visible_messages_without_receiving_them(mns):
    queue = make_queue(mns)
    queue.batch_send_message([Message("one"), Message("two")])

    peeked = queue.peek_message_with_str_body()
    batch = queue.batch_peek_message_with_str_body(16)
    received = queue.receive_message_with_str_body(0)

    assert peeked.message_body == "one"
    assert peeked.dequeue_count == 0
    assert [m.message_body for m in batch] == ["one", "two"]
    assert received.message_body == "one"
    assert received.dequeue_count == 1


def test_user_and_system_properties_travel_with_the_message(mns):
    queue = make_queue(mns)
    message = Message("with headers")
    message.add_user_property("session", MessagePropertyValue.create_string("s-42"))
    message.add_user_property("attempt", MessagePropertyValue.create_number(3))
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    message.add_system_property(
        SystemPropertyName.TRACEPARENT, MessageSystemPropertyValue.create_string(traceparent)
    )
    queue.send_message(message)

    received = queue.receive_message(0)

    assert received.user_properties["session"].get_raw_value() == "s-42"
    assert received.user_properties["attempt"].get_raw_value() == "3"
    assert received.system_properties["traceparent"].get_raw_value() == traceparent


# --------------------------------------------------------------------------- visibility


def test_a_message_not_deleted_reappears_after_its_visibility_timeout(mns):
    queue = make_queue(mns, vis_timeout=1)
    queue.send_message(Message("retry me"))
    first = queue.receive_message(0)

    # The long poll is woken when the message becomes visible again.
    second = queue.receive_message(10)

    assert second.message_id == first.message_id
    assert second.dequeue_count == 2
    assert second.receipt_handle != first.receipt_handle
    assert second.first_dequeue_time == first.first_dequeue_time
    assert server_error(queue.delete_message, first.receipt_handle).type == "MessageNotExist"
    queue.delete_message(second.receipt_handle)


def test_change_message_visibility_returns_a_new_handle_and_the_old_one_no_longer_deletes(mns):
    queue = make_queue(mns, vis_timeout=30)
    queue.send_message(Message("slow job"))
    received = queue.receive_message(0)

    changed = queue.change_message_visibility(received.receipt_handle, 1)

    assert changed.receipt_handle != received.receipt_handle
    # The SDK hands NextVisibleTime of a visibility change back as a string.
    assert int(changed.next_visible_time) < received.next_visible_time
    error = server_error(queue.delete_message, received.receipt_handle)
    assert error.type == "MessageNotExist"
    assert received.receipt_handle in error.message
    again = queue.receive_message(10)
    assert (again.message_id, again.dequeue_count) == (received.message_id, 2)


def test_a_malformed_receipt_handle_is_refused_with_receipt_handle_error(mns):
    queue = make_queue(mns)

    error = server_error(queue.delete_message, "not-a-handle")

    assert error.type == "ReceiptHandleError"
    assert "'not-a-handle'" in error.message


def test_delay_seconds_hold_a_message_back_until_they_pass(mns):
    queue = make_queue(mns)

    queue.send_message(Message("later", delay_seconds=1))

    assert server_error(queue.receive_message, 0).type == "MessageNotExist"
    assert queue.get_attributes()._delay_messages == 1
    # The long poll is woken when the delay ends; nothing else happens to the queue.
    received = queue.receive_message_with_str_body(10)
    assert (received.message_body, received.dequeue_count) == ("later", 1)


def test_a_queue_delay_applies_to_messages_sent_without_their_own(mns):
    queue = make_queue(mns, delay_sec=1)

    queue.send_message(Message("queue delay"))
    queue.send_message(Message("no delay", delay_seconds=0))

    assert queue.receive_message_with_str_body(0).message_body == "no delay"
    assert queue.receive_message_with_str_body(10).message_body == "queue delay"


# --------------------------------------------------------------------------- long polling


def test_a_long_poll_returns_as_soon_as_another_thread_sends_a_message(mns):
    sender = make_queue(mns)  # its connection is open (kept alive) before the poll's
    connected = connections_to(mns.port)

    def send_once_polling() -> None:
        wait_until(lambda: connections_to(mns.port) > connected, 30, "the long poll to connect")
        sender.send_message(Message("wake up"))

    thread = threading.Thread(target=send_once_polling)
    thread.start()
    received = mns.account().get_queue("jobs").receive_message_with_str_body(30)
    thread.join(30)

    # The message itself, not the empty answer a 30 s poll gives when nothing arrives.
    assert received.message_body == "wake up"


def test_twenty_concurrent_long_polls_wait_without_blocking_other_requests(mns):
    make_queue(mns)
    receivers = 20
    results: list[str] = []
    finished = threading.Event()
    lock = threading.Lock()
    ready = threading.Barrier(receivers + 1)

    def receive() -> None:
        # One Account per thread: an SDK client holds a single HTTP connection.
        queue = mns.account().get_queue("jobs")
        ready.wait()
        body = queue.receive_message_with_str_body(10).message_body
        with lock:
            results.append(body)
            finished.set()

    threads = [threading.Thread(target=receive) for _ in range(receivers)]
    for thread in threads:
        thread.start()
    ready.wait()
    wait_until(lambda: connections_to(mns.port) >= receivers, 30, "twenty receivers connected")
    queue = mns.account().get_queue("jobs")

    # Served while all twenty polls are pending: none has returned yet.
    meta = queue.get_attributes()
    assert not finished.is_set()
    assert meta._active_messages == 0

    for i in range(receivers):
        queue.send_message(Message(f"job {i}"))
    for thread in threads:
        thread.join(30)

    assert sorted(results) == sorted(f"job {i}" for i in range(receivers))


def test_stopping_the_server_answers_a_pending_long_poll_with_message_not_exist(tmp_path):
    server = LocalMNS(tmp_path / "mns.db").start()
    queue = make_queue(server)
    outcome: list[object] = []

    connected = connections_to(server.port)  # make_queue's, kept alive

    def poll() -> None:
        try:  # on a connection of its own, so its arrival can be seen
            outcome.append(server.account().get_queue(queue.queue_name).receive_message(30))
        except Exception as error:
            outcome.append(error)

    poller = threading.Thread(target=poll)
    poller.start()
    wait_until(lambda: connections_to(server.port) > connected, 30, "the long poll to connect")
    server.stop()
    poller.join(30)

    assert isinstance(outcome[0], MNSServerException)
    assert outcome[0].type == "MessageNotExist"


# --------------------------------------------------------------------------- limits


def test_a_body_over_the_queue_maximum_is_refused_and_one_at_the_maximum_is_accepted(mns):
    queue = make_queue(mns)
    queue.set_encoding(False)

    queue.send_message(Message("x" * 65536))
    error = server_error(queue.send_message, Message("x" * 65537))

    assert error.type == "InvalidArgument"
    assert "65537 bytes" in error.message


def test_the_limit_counts_the_base64_text_that_is_sent(mns):
    queue = make_queue(mns, max_msg_size=1024)

    queue.send_message(Message("y" * 768))
    error = server_error(queue.send_message, Message("y" * 769))

    assert error.type == "InvalidArgument"


def test_a_batch_whose_bodies_total_over_64_kb_is_refused(mns):
    queue = make_queue(mns)
    queue.set_encoding(False)

    error = server_error(queue.batch_send_message, [Message("z" * 40000), Message("z" * 40000)])

    assert error.type == "InvalidArgument"
    assert server_error(queue.receive_message, 0).type == "MessageNotExist"


# --------------------------------------------------------------------------- persistence


def test_a_restarted_server_keeps_undeleted_messages_and_their_receipt_handles(tmp_path):
    db = tmp_path / "mns.db"
    with LocalMNS(db) as server:
        queue = make_queue(server, vis_timeout=60)
        queue.batch_send_message([Message("in flight"), Message("waiting")])
        in_flight = queue.receive_message_with_str_body(0)

    with LocalMNS(db) as server:
        queue = server.account().get_queue("jobs")
        waiting = queue.receive_message_with_str_body(0)
        queue.delete_message(in_flight.receipt_handle)
        queue.delete_message(waiting.receipt_handle)

    assert in_flight.message_body == "in flight"
    assert (waiting.message_body, waiting.dequeue_count) == ("waiting", 1)


def test_restarting_the_same_server_object_keeps_its_endpoint(tmp_path):
    server = LocalMNS(tmp_path / "mns.db")
    with server:
        endpoint = server.endpoint
        make_queue(server).send_message(Message("survives"))
    with server:
        assert server.endpoint == endpoint
        assert (
            server.account().get_queue("jobs").receive_message_with_str_body(0).message_body
            == "survives"
        )


# --------------------------------------------------------------------------- authentication


def test_a_wrong_secret_is_refused_with_signature_does_not_match(mns):
    make_queue(mns)
    impostor = Account(mns.endpoint, mns.access_id, "not-the-secret").get_queue("jobs")

    error = server_error(impostor.send_message, Message("x"))

    assert error.type == "SignatureDoesNotMatch"


def test_an_unknown_access_key_id_is_refused_with_invalid_access_key_id(mns):
    stranger = Account(mns.endpoint, "someone-else", mns.access_key).get_queue("jobs")

    error = server_error(stranger.get_attributes)

    assert error.type == "InvalidAccessKeyId"
    assert "'someone-else'" in error.message


def test_a_configured_security_token_must_come_with_every_request(tmp_path):
    with LocalMNS(tmp_path / "mns.db", security_token="sts-token") as server:
        make_queue(server)
        without = Account(server.endpoint, server.access_id, server.access_key)

        error = server_error(without.get_queue("jobs").get_attributes)

    assert error.type == "AccessDenied"


def test_the_signature_is_computed_as_the_sdk_computes_it():
    client = MNSClient("http://127.0.0.1:1", "id", "secret")
    headers = {
        "x-mns-version": "2015-06-06",
        "x-mns-prefix": "a-",
        "content-md5": mns_protocol.content_md5(b"<Queue/>"),
        "content-type": "text/xml;charset=UTF-8",
        "date": "Thu, 27 Nov 2025 10:00:00 GMT",
        "host": "127.0.0.1:1",
    }
    resource = "/queues/q/messages?ReceiptHandle=1-abc&VisibilityTimeout=5"

    expected = client.get_signature(
        "PUT", headers, resource, client.credentials_provider.get_credentials()
    )

    assert mns_protocol.authorization("id", "secret", "PUT", headers, resource) == expected


def test_an_unsigned_request_gets_an_mns_error_document(mns):
    response = httpx.get(f"{mns.endpoint}/queues/jobs")

    error = ET.fromstring(response.content)
    assert response.status_code == 400
    assert error.tag == f"{NS}Error"
    assert error.findtext(f"{NS}Code") == "MissingAuthorizationHeader"
    assert error.findtext(f"{NS}RequestId") == response.headers["x-mns-request-id"]
    assert error.findtext(f"{NS}HostId") == mns.endpoint
    assert response.headers["x-mns-version"] == "2015-06-06"
