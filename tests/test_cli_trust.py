"""The command line's trust and secrecy: a private CA as curl takes one (options and
environment), and secrets in URLs masked in every line it prints or lists."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
import trustme
from cli_run import bgt, listed
from servers import Nginx, sha256

BARE_ENV = {
    k: v
    for k, v in os.environ.items()
    if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE")
}


@pytest.fixture
def ca_pem(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def ca_dir(ca_pem: Path, tmp_path: Path) -> Path:
    """A directory of CA certificates as OpenSSL looks them up: by subject hash."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is not installed: ./scripts/install-test-deps installs it")
    folder = tmp_path / "certs"
    folder.mkdir()
    digest = subprocess.run(
        [openssl, "x509", "-hash", "-noout", "-in", str(ca_pem)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    shutil.copy(ca_pem, folder / f"{digest}.0")
    return folder


def get_tls(
    tls_nginx: Nginx, tmp_path: Path, *options: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    url = tls_nginx.tls_url("small.bin")
    return bgt(
        "get", url, "-o", "f.bin", *options, cwd=tmp_path, state=tmp_path / "s", env=env or BARE_ENV
    )


def test_an_untrusted_certificate_names_the_options_that_trust_one(
    tls_nginx: Nginx, tmp_path: Path
) -> None:
    """TLS is verified: a certificate of an unknown CA fails, and the line says which
    options (and variables) trust a CA; no libcurl words."""
    done = get_tls(tls_nginx, tmp_path)
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert "the TLS certificate of localhost could not be verified" in line
    assert "--cacert FILE or --capath DIR" in line
    assert "SSL_CERT_FILE" in line
    assert "curl" not in line
    assert not (tmp_path / "f.bin").exists()


@pytest.mark.parametrize(
    ("how", "option"),
    [
        ("--cacert", True),
        ("--capath", True),
        ("SSL_CERT_FILE", False),
        ("CURL_CA_BUNDLE", False),
        ("SSL_CERT_DIR", False),
    ],
)
def test_a_private_ca_is_trusted_as_curl_takes_it(
    tls_nginx: Nginx, tmp_path: Path, ca_pem: Path, ca_dir: Path, how: str, option: bool
) -> None:
    """--cacert FILE, --capath DIR, and curl's variables: the download completes."""
    where = str(ca_dir if how.endswith(("capath", "DIR")) else ca_pem)
    if option:
        done = get_tls(tls_nginx, tmp_path, how, where)
    else:
        done = get_tls(tls_nginx, tmp_path, env={**BARE_ENV, how: where})
    assert done.returncode == 0, done.stderr
    assert sha256(tmp_path / "f.bin") == sha256(tls_nginx.www / "small.bin")


def test_cacert_goes_before_the_environment(tls_nginx: Nginx, tmp_path: Path, ca_pem: Path) -> None:
    """An option is taken over a variable (as curl does): a bundle without the CA in
    CURL_CA_BUNDLE does not stop --cacert's; a missing --cacert file is bad usage."""
    empty = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(empty))
    env = {**BARE_ENV, "CURL_CA_BUNDLE": str(empty)}
    assert get_tls(tls_nginx, tmp_path, env=env).returncode == 1
    done = get_tls(tls_nginx, tmp_path, "--cacert", str(ca_pem), env=env)
    assert done.returncode == 0, done.stderr
    missing = get_tls(tls_nginx, tmp_path, "--cacert", str(tmp_path / "nope.pem"))
    assert missing.returncode == 2
    assert "nope.pem: no such CA certificate file" in missing.stderr


def test_mirror_and_resume_take_cacert(tls_nginx: Nginx, tmp_path: Path, ca_pem: Path) -> None:
    """mirror --cacert downloads its list over TLS; a get that failed on the certificate
    is kept, and resume --cacert finishes it."""
    state = tmp_path / "s"
    (tmp_path / "list.txt").write_text(f"{tls_nginx.tls_url('small.bin')} m.bin\n")
    done = bgt(
        "mirror", "-i", "list.txt", "-d", "out", "--cacert", str(ca_pem), cwd=tmp_path, state=state
    )
    assert done.returncode == 0, done.stderr
    assert sha256(tmp_path / "out" / "m.bin") == sha256(tls_nginx.www / "small.bin")
    assert get_tls(tls_nginx, tmp_path).returncode == 1
    (row,) = listed(tmp_path, state)
    assert row[1] == "ERROR"
    resumed = bgt("resume", row[0], "--cacert", str(ca_pem), "-q", cwd=tmp_path, state=state)
    assert resumed.returncode == 0, resumed.stderr
    assert sha256(tmp_path / "f.bin") == sha256(tls_nginx.www / "small.bin")


SIGNED = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDSECRETCRED&"
    "X-Amz-Security-Token=SESSIONSECRET&X-Amz-Signature=SIGSECRET&x-id=GetObject&sig=AZSECRET"
)


def test_a_presigned_url_is_masked_in_errors_and_in_list(nginx: Nginx, tmp_path: Path) -> None:
    """A failed presigned URL: the error line and list show *** for every signature,
    credential and token, and the rest of the URL; the state database keeps it whole."""
    url = nginx.url(f"gone.bin?{SIGNED}")
    state = tmp_path / "s"
    done = bgt("get", url, "-o", "f.bin", cwd=tmp_path, state=state)
    assert done.returncode == 1
    rows = listed(tmp_path, state)
    for text in (done.stderr, "\n".join("  ".join(r) for r in rows)):
        assert "SECRET" not in text
        assert "X-Amz-Signature=***" in text
        assert "X-Amz-Credential=***" in text
        assert "X-Amz-Security-Token=***" in text
        assert "sig=***" in text
        assert "x-id=GetObject" in text
    db = sqlite3.connect(state / "operations.sqlite3")
    try:
        ((stored,),) = db.execute("SELECT uri FROM operations").fetchall()
    finally:
        db.close()
    assert stored == url


def test_a_mirror_masks_the_secrets_of_its_failures(nginx: Nginx, tmp_path: Path) -> None:
    """A mirror's failure lines mask a URL's token as get's do."""
    (tmp_path / "list.txt").write_text(
        f"{nginx.url('gone.bin?access_token=TOKSECRET&v=1')} a.bin\n"
        f"{nginx.url('small.bin?X-Goog-Signature=GSECRET')} b.bin\n"
    )
    done = bgt("mirror", "-i", "list.txt", "-d", "out", cwd=tmp_path, state=tmp_path / "s")
    assert done.returncode == 1
    assert "SECRET" not in done.stderr
    assert "access_token=***&v=1" in done.stderr
    assert (tmp_path / "out" / "b.bin").read_bytes() == (nginx.www / "small.bin").read_bytes()
