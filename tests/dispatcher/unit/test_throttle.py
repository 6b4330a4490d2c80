import random

from services.dispatcher.domain.retry import backoff
from services.dispatcher.domain.throttle import TokenBucket


def test_bucket_starts_full_then_paces() -> None:
    bucket = TokenBucket.start(rate=10, now=0.0)
    assert bucket.reserve(10, 0.0) == 0.0
    assert bucket.reserve(5, 0.0) == 0.5  # 5 tokens at 10/s


def test_long_run_rate_is_exact() -> None:
    bucket = TokenBucket.start(rate=100, now=0.0)
    now, sent = 0.0, 0
    while now < 10.0:
        now += bucket.reserve(7, now)  # wait as told, then send 7 segments
        sent += 7
    assert abs(sent - (100 * 10 + 100)) <= 7  # rate × time plus the initial burst


def test_big_request_on_small_bucket() -> None:
    bucket = TokenBucket.start(rate=5, now=0.0)
    assert bucket.reserve(10, 0.0) == 1.0  # more than capacity: borrow, wait a second


def test_backoff_grows_and_caps() -> None:
    rng = random.Random(1)
    assert 0.25 <= backoff(1, 0.5, 20, rng) <= 0.5
    assert 2.0 <= backoff(4, 0.5, 20, rng) <= 4.0
    assert 10 <= backoff(30, 0.5, 20, rng) <= 20


def test_take_free_takes_only_what_the_bucket_holds() -> None:
    bucket = TokenBucket.start(rate=300, now=0.0)
    assert bucket.take_free(300, 0.0) == 0.0  # the bucket held them
    assert bucket.take_free(100, 0.0) == 100 / 300  # it holds none: nothing taken, ask again then
    assert bucket.tokens == 0
    assert bucket.take_free(100, 0.2) == 40 / 300  # 60 refilled, 40 to go
    assert bucket.take_free(100, 0.2 + 40 / 300) == 0.0


def test_a_priority_reservation_goes_before_a_waiting_campaign_chunk() -> None:
    bucket = TokenBucket.start(rate=300, now=0.0)
    bucket.reserve(300, 0.0)  # drained
    assert bucket.take_free(100, 0.0) > 0  # the campaign chunk waits without booking ahead ...
    assert bucket.reserve(1, 0.0) == 1 / 300  # ... so a code waits for its own token only
    assert bucket.take_free(100, 0.2) > 0  # and the campaign for the code's token too


def test_take_free_past_capacity_waits_for_a_full_bucket() -> None:
    bucket = TokenBucket.start(rate=5, now=0.0)
    assert bucket.take_free(10, 0.0) == 0.0  # full: borrow the rest, as reserve does
    assert bucket.take_free(10, 1.0) == 1.0  # -5 + 5 refilled: 5 to go (1 s) for a full bucket
