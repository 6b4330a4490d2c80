from services.ingest.ratelimit import estimate, judge, wait_until_below


def row(requests: int, messages: int = 0, prev_requests: int = 0, prev_messages: int = 0, elapsed: float = 30.0) -> dict:
    return {"requests": requests, "messages": messages, "prev_requests": prev_requests,
            "prev_messages": prev_messages, "elapsed": elapsed}


def test_sliding_estimate_weights_the_previous_minute() -> None:
    assert estimate(100, 10, 30) == 60
    assert estimate(100, 10, 60) == 10
    assert estimate(0, 10, 0) == 10


def test_judge_requests_then_messages() -> None:
    assert judge(row(100), 1, rpm=100, mpm=1000).allowed
    refused = judge(row(101), 1, rpm=100, mpm=1000)
    assert (refused.allowed, refused.limit) == (False, "requests") and refused.retry_after_s >= 1
    refused = judge(row(5, messages=2000), 1000, rpm=100, mpm=1000)
    assert (refused.allowed, refused.limit) == (False, "messages")


def test_retry_after_is_when_the_estimate_drops() -> None:
    # 120 last minute, 0 now, 30 s in: estimate 60 > 50; the old minute drains at 2/s: 5 s.
    assert wait_until_below(120, 0, 30, 50) == 5
    # nothing before, 101 now: wait for the minute to turn (and then some of it to drain)
    assert 30 <= wait_until_below(0, 101, 30, 100) <= 31
