"""A site aggregator's own signing key, endorsed by the job's key.

A board started with ``fedge run --trust-key`` (the job's public key) refuses any round
announcement that does not verify. A site aggregator announces rounds of its own to its
boards (its own selection, an earlier deadline), so it cannot pass the central job's signed
announcement on: it signs its announcements with a key of its own and puts the job key's
endorsement of that key in each (docs/protocol.md section 12). Its boards still need nothing
but the job's public key, and a site key signs nothing else a board accepts: models and
control must carry the job's own signature.

``fedcoord keys site --job J --site S``, run where the job's private key is, writes the
site's directory:

    signing.key       the site's private key (0600: it never leaves the site's machine)
    signing.pub       the site's public key
    endorsement.json  the job key's SiteEndorsement of that key, for job J and site S
    job.pub           the job's public key: what the site checks upstream messages against

Copy it to the site's machine and run ``fedcoord site --site-key DIR``. A site running where
the job's key is ($EDGEFL_KEYS_DIR/J/) uses $EDGEFL_KEYS_DIR/J/sites/S/ by default, made on
its first start.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from coordinator.job_keys import job_key_dir
from coordinator.pki import SIGNING_KEY, SIGNING_PUB, generate_signing_key
from edge_client.errors import ConfigError, ProtocolError
from edge_client.protocol import RoundAnnouncement, SiteEndorsement, check_id
from edge_client.signing import SignatureError, Signer, Verifier

log = logging.getLogger(__name__)

ENDORSEMENT = "endorsement.json"
JOB_PUB = "job.pub"


@dataclass(frozen=True)
class SiteKey:
    """A site's private key and the job key's endorsement of it, checked to belong together."""

    directory: Path
    signer: Signer
    endorsement: str  # the SiteEndorsement's exact JSON, as the job's key signed it
    endorsed_by: str  # the job key's id
    job_public: Path | None  # job.pub, when the directory has it

    def announcement(self, ann: RoundAnnouncement) -> bytes:
        """``ann`` with the endorsement, signed with the site's key."""
        return self.signer.announcement(dataclasses.replace(ann, endorsement=self.endorsement))

    def describe(self, site: str) -> str:
        return (
            f"site {site} signs the rounds it announces with its key {self.signer.key_id} "
            f"({self.directory}), endorsed by the job's key {self.endorsed_by}"
        )


def site_key_dir(job: str, site: str) -> Path:
    """Where a site's key lives by default: $EDGEFL_KEYS_DIR/<job>/sites/<site>/."""
    try:
        check_id(site, "site id")
    except ProtocolError as exc:
        raise ConfigError(str(exc)) from exc
    return job_key_dir(job) / "sites" / site


def _how_to_make(job: str, site: str) -> str:
    return (
        f"make it where the job's key is with fedcoord keys site --job {job} --site {site} "
        "--out DIR, and copy DIR to the site's machine"
    )


def make_site_key(
    job_signer: Signer, job: str, site: str, out: str | Path, *, force: bool = False
) -> SiteKey:
    """Write a new key pair for ``site`` into ``out`` with the job key's endorsement of it."""
    out = Path(out).expanduser()
    for name in (ENDORSEMENT, JOB_PUB):
        if (out / name).exists() and not force:
            raise ConfigError(f"{out / name} already exists: remove it or pass --force")
    made = generate_signing_key(out, force=force)
    site_public = Signer.from_file(made.private).public_raw
    endorsement = job_signer.site_endorsement(job, site, site_public, round(time.time(), 3))
    (out / ENDORSEMENT).write_bytes(endorsement)
    (out / JOB_PUB).write_bytes(job_signer.public_pem)
    return load_site_key(out, job, site)


def load_site_key(
    directory: str | Path, job: str, site: str, trust: Verifier | None = None
) -> SiteKey:
    """The site key in ``directory``, checked: it is the key endorsed, the endorsement is for
    this job and site, and it verifies with ``trust`` and with the directory's job.pub."""
    d = Path(directory).expanduser()
    if not (d / SIGNING_KEY).is_file():
        raise ConfigError(f"{d} holds no site key ({SIGNING_KEY}): {_how_to_make(job, site)}")
    signer = Signer.from_file(d / SIGNING_KEY)
    try:
        text = (d / ENDORSEMENT).read_text(encoding="utf-8").strip()
        endorsement = SiteEndorsement.from_json(text)
    except OSError as exc:
        raise ConfigError(
            f"cannot read {d / ENDORSEMENT} ({exc.strerror or exc}): {_how_to_make(job, site)}"
        ) from exc
    except (ProtocolError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{d / ENDORSEMENT} is not a site endorsement: {exc}") from exc
    if (endorsement.job, endorsement.site) != (job, site):
        raise ConfigError(
            f"{d / ENDORSEMENT} endorses site {endorsement.site!r} of job {endorsement.job!r}, "
            f"not site {site!r} of job {job!r}: {_how_to_make(job, site)}"
        )
    if endorsement.public_raw != signer.public_raw:
        raise ConfigError(
            f"{d / ENDORSEMENT} endorses another key than {d / SIGNING_KEY}: "
            f"{_how_to_make(job, site)}"
        )
    job_public = d / JOB_PUB if (d / JOB_PUB).is_file() else None
    checks = [trust] if trust is not None else []
    if job_public is not None:
        checks.append(Verifier.from_spec(str(job_public)))
    for verifier in checks:
        try:
            verifier.endorsed_site(text, job)
        except SignatureError as exc:
            raise ConfigError(
                f"{d / ENDORSEMENT} does not verify with the job's key {verifier.key_id} "
                f"({exc}): {_how_to_make(job, site)}"
            ) from exc
    signature = endorsement.signature or {}
    return SiteKey(d, signer, text, str(signature.get("key")), job_public)


def resolve_site_key(
    job: str, site: str, given: str | None, trust: Verifier | None = None
) -> SiteKey | None:
    """The site's key: ``given`` (a directory), else the job's default one for this site,
    made now if the job's private key is on this machine; None when there is none."""
    if given:
        return load_site_key(given, job, site, trust)
    d = site_key_dir(job, site)
    if (d / SIGNING_KEY).exists():
        return load_site_key(d, job, site, trust)
    job_dir = job_key_dir(job)
    if not (job_dir / SIGNING_KEY).is_file():
        return None
    if not (job_dir / SIGNING_PUB).is_file():
        raise ConfigError(f"{job_dir / SIGNING_PUB} is missing beside {job_dir / SIGNING_KEY}")
    made = make_site_key(Signer.from_file(job_dir / SIGNING_KEY), job, site, d)
    log.info("made site %s's key %s in %s", site, made.signer.key_id, d)
    return load_site_key(d, job, site, trust)
