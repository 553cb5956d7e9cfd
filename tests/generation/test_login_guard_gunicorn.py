"""Brute force against production gunicorn (3 workers, the documented config), with and without Redis:
every login path locks an account and an address after the configured failures, however the guesses
are spread over the workers, and the submit throttle holds across them too. Requests come as nginx
passes them on (deploy/nginx.conf): X-Forwarded-Proto https, X-Forwarded-For the client's address.
In-process details: tests/generation/test_login_guard.py."""

import re
import threading

import pytest
import requests
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from rest_framework.authtoken.models import Token

from generation.models import GenerationRequest
from models_registry.models import AvailableModel, ModelType
from tests.concurrency import run_concurrently
from tests.plugins.gunicorn import HOST

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ACCOUNT_LIMIT, ADDRESS_LIMIT, SUBMITS_PER_DAY = 3, 5, 4
PASSWORD = "correct-horse-battery"
ORIGIN = f"https://{HOST}"


def proxied(address):
    """The headers nginx adds for a client at ``address``."""
    return {"Host": HOST, "X-Forwarded-Proto": "https", "X-Forwarded-For": address}


class Login:
    """One login attempt on one of the three paths, as a fresh client (a new connection each time)."""

    def __init__(self, base, path):
        self.base, self.path = base, path

    def __call__(self, username, password, *, address):
        headers = proxied(address)
        if self.path == "/api/v1/auth/token/":
            response = requests.post(self.base + self.path, json={"username": username, "password": password},
                                     headers=headers, timeout=30)
            return response.status_code, response.status_code == 200 and "token" in response.json()
        page = requests.get(self.base + self.path, headers=headers, timeout=30)
        # the cookie is Secure (we pose as HTTPS behind nginx), so requests would not send it back itself
        csrf = re.search(r"csrftoken=([^;]+)", page.headers.get("Set-Cookie", "")).group(1)
        response = requests.post(self.base + self.path, allow_redirects=False, timeout=30,
                                 data={"username": username, "password": password, "next": "/",
                                       "csrfmiddlewaretoken": csrf},
                                 headers={**headers, "Cookie": f"csrftoken={csrf}", "Origin": ORIGIN,
                                          "Referer": ORIGIN + self.path})
        return response.status_code, response.status_code == 302 and "sessionid=" in response.headers.get(
            "Set-Cookie", "")


PATHS = ["/api/v1/auth/token/", "/accounts/login/", "/admin/login/"]


@pytest.fixture
def staff():
    """Staff accounts hashed as production checks them (the test settings' MD5 hasher is not there),
    with few PBKDF2 iterations so the many checks stay quick."""
    users = get_user_model().objects
    hasher = PBKDF2PasswordHasher()

    def make(name):
        password = hasher.encode(PASSWORD, hasher.salt(), iterations=1000)
        return users.create(username=name, password=password, is_staff=True, is_superuser=True)

    return make


@pytest.mark.parametrize("redis", [True, False], ids=["redis", "no-redis"])
def test_brute_force_on_every_login_path_across_three_workers(start_gunicorn, staff, redis):
    env = {"LOGIN_FAILURES_PER_ACCOUNT": str(ACCOUNT_LIMIT), "LOGIN_FAILURES_PER_ADDRESS": str(ADDRESS_LIMIT),
           "AUTH_THROTTLE_RATE": "1000/min", "SUBMIT_THROTTLE_RATE": f"{SUBMITS_PER_DAY}/day"}
    if not redis:
        env["REDIS_URL"] = ""  # ORM broker, each worker with its own local-memory cache
    base, log = start_gunicorn(workers=3, pages=True, **env)

    for n, path in enumerate(PATHS):
        login = Login(base, path)
        victim = staff(f"victim{n}")
        # guesses from ever new addresses (a botnet, or headers a client made up): the account locks
        codes = [login(victim.username, f"guess-{i}", address=f"198.51.{n}.{i}")[0] for i in range(ACCOUNT_LIMIT + 3)]
        assert codes.count(429) == 4, (path, codes)  # the ACCOUNT_LIMIT-th failure started the lockout
        status, logged_in = login(victim.username, PASSWORD, address=f"198.51.{n}.200")
        assert status == 429 and not logged_in, path

    # one address trying many usernames locks the address, for every account and path
    login = Login(base, "/api/v1/auth/token/")
    codes = [login(f"nobody{i}", "x", address="203.0.113.66")[0] for i in range(ADDRESS_LIMIT + 2)]
    assert codes[-2:] == [429, 429], codes
    owner = staff("owner")
    for path in PATHS:
        assert Login(base, path)(owner.username, PASSWORD, address="203.0.113.66") == (429, False), path
        assert Login(base, path)(owner.username, PASSWORD, address="203.0.113.67")[1], path

    # concurrent guesses at one account: no more passwords are checked than the limit
    target, results = staff("target"), []
    barrier = threading.Barrier(12)

    def guess(i):
        barrier.wait(timeout=30)
        results.append(Login(base, "/api/v1/auth/token/")("target", "wrong", address=f"192.0.2.{i}")[0])

    run_concurrently([lambda i=i: guess(i) for i in range(12)], timeout=120)
    assert len(results) == 12 and results.count(400) <= ACCOUNT_LIMIT - 1 and set(results) <= {400, 429}
    assert Login(base, "/api/v1/auth/token/")(target.username, PASSWORD, address="192.0.2.99")[0] == 429

    # the guesses really were spread over the workers
    workers = set(re.findall(r" (\d+) login guard: failed login", log.read_text()))
    assert len(workers) >= 2, log.read_text()[-3000:]


@pytest.mark.parametrize("redis", [True, False], ids=["redis", "no-redis"])
def test_the_submit_throttle_holds_across_three_workers(start_gunicorn, staff, redis):
    AvailableModel.objects.create(name="tiny-sd15-random.safetensors", type=ModelType.CHECKPOINT)
    token = Token.objects.create(user=staff("submitter")).key
    base, _ = start_gunicorn(workers=3, SUBMIT_THROTTLE_RATE=f"{SUBMITS_PER_DAY}/day",
                             **({} if redis else {"REDIS_URL": ""}))
    body = {"prompt": "a lighthouse", "checkpoint_model": "tiny-sd15-random.safetensors", "width": 64, "height": 64}
    barrier, codes = threading.Barrier(10), []

    def submit():
        barrier.wait(timeout=30)
        codes.append(requests.post(f"{base}/api/v1/comfyui/generate/", json=body, timeout=60,
                                   headers={**proxied("203.0.113.5"), "Authorization": f"Token {token}"}).status_code)

    run_concurrently([submit] * 10, timeout=120)
    assert sorted(codes) == [201] * SUBMITS_PER_DAY + [429] * (10 - SUBMITS_PER_DAY)
    assert GenerationRequest.objects.count() == SUBMITS_PER_DAY


def test_without_the_proxy_switch_x_forwarded_proto_means_nothing(start_gunicorn):
    """BEHIND_TLS_PROXY off: gunicorn no longer marks a request from 127.0.0.1 https on its own."""
    base, _ = start_gunicorn(workers=1, BEHIND_TLS_PROXY="0", TRUSTED_PROXY_COUNT="0")
    page = requests.get(base + "/admin/", headers=proxied("10.0.0.1"), timeout=10, allow_redirects=False)
    assert page.status_code == 301 and page.headers["Location"].startswith(f"https://{HOST}/")
