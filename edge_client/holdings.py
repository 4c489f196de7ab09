"""What a device holds to train a round: the model, the global weights and its data's fit.

Models are verified before the interpreter ever sees them (with a trusted key, the Ed25519
signature over the exact envelope bytes first; then the body's sha256 must equal the
manifest's) and a refused model never replaces the last good one. Accepted models and global
weights are written to the state directory, and read back from it on restart.
"""

from __future__ import annotations

import logging

import numpy as np

from edge_client.data import Dataset, Normalization
from edge_client.errors import EdgeFLError, ProtocolError
from edge_client.local_training import check_data_fits
from edge_client.manifest import Manifest
from edge_client.protocol import Envelope, RoundAnnouncement
from edge_client.runtime import Runtime
from edge_client.signing import Verifier
from edge_client.state import ClientState
from edge_client.trainable_model import TrainableModel

log = logging.getLogger(__name__)


class Holdings:
    """The current model (with the data's normalisation) and global weights."""

    def __init__(
        self,
        data: Dataset,
        runtime: Runtime,
        state: ClientState,
        num_threads: int | None = None,
        *,
        verifier: Verifier | None = None,
    ) -> None:
        self.data = data
        self.verifier = verifier  # None: models need no signature
        self.runtime = runtime
        self.state = state
        self.num_threads = num_threads
        self.model: TrainableModel | None = None
        self.normalization: Normalization | None = None
        self.data_problem: str | None = None  # why the local data cannot train this model
        self.global_weights: dict[str, np.ndarray] | None = None
        self.global_sha256: str | None = None
        self.refused: dict[str, str] = {}  # model sha256 -> why it was refused

    @property
    def model_sha256(self) -> str | None:
        return self.model.manifest.sha256 if self.model is not None else None

    def holds_model(self, sha256: str) -> bool:
        return self.model_sha256 == sha256

    def missing(self, ann: RoundAnnouncement) -> list[str]:
        """What is still needed to train ``ann`` (empty when ready)."""
        missing = []
        if not self.holds_model(ann.model_sha256):
            missing.append(f"model {ann.model_sha256[:12]}...")
        if self.global_sha256 != ann.global_sha256:
            missing.append(f"global weights {ann.global_sha256[:12]}...")
        return missing

    # -- model ------------------------------------------------------------------------
    def accept_model(self, env: Envelope, raw: bytes = b"") -> bool:
        """Verify and load a model envelope; True if it is a new model now in use.

        With a verifier, ``raw`` (the exact envelope bytes received) must carry a valid
        signature, checked before anything else; the envelope used is the signed one.
        """
        if self.verifier is not None:
            try:
                env = self.verifier.model(raw)
            except ProtocolError as exc:  # SignatureError, or no raw bytes to check
                self._refuse(env.sha256, f"{exc}")
                return False
        try:
            manifest = Manifest.from_dict(env.meta)
        except EdgeFLError as exc:
            self._refuse(env.sha256, f"its manifest is invalid ({exc})")
            return False
        if self.model_sha256 == manifest.sha256 == env.sha256:
            return False  # the model we have: a retained copy or a QoS 1 duplicate
        if manifest.sha256 != env.sha256:
            reason = (
                f"its body has sha256 {env.sha256[:12]}..., its manifest says "
                f"{manifest.sha256[:12]}... (corrupt or mismatched export)"
            )
            self._refuse(manifest.sha256, reason, also=env.sha256)
            return False
        try:
            model = self._load(env.body, manifest)
        except EdgeFLError as exc:
            self._refuse(manifest.sha256, str(exc))
            return False
        self.refused.pop(manifest.sha256, None)
        self._use(model)
        self.state.save_model(env.body, manifest)
        log.info(
            "model %s... accepted: %s, %d parameters, batch %d, %s",
            manifest.sha256[:12],
            manifest.architecture,
            manifest.parameters,
            manifest.batch_size,
            manifest.optimizer,
        )
        return True

    def _load(self, tflite: bytes, manifest: Manifest) -> TrainableModel:
        # TrainableModel checks the sha256 again before the interpreter parses the bytes.
        return TrainableModel(tflite, manifest, runtime=self.runtime, num_threads=self.num_threads)

    def _refuse(self, sha: str, reason: str, also: str | None = None) -> None:
        current = self.model_sha256
        kept = f"; keeping model {current[:12]}..." if current else ""
        log.error("model %s... refused: %s%s", sha[:12], reason, kept)
        for key in (sha, also):
            if key and key != current:
                self.refused[key] = f"model {sha[:12]}... refused: {reason}"

    def _use(self, model: TrainableModel) -> None:
        self.model = model
        try:
            self.normalization = check_data_fits(self.data, model.manifest)
            self.data_problem = None
        except EdgeFLError as exc:
            self.normalization = None
            self.data_problem = f"local data does not fit the model: {exc}"
            log.error("%s", self.data_problem)

    # -- global weights ---------------------------------------------------------------
    def accept_global(self, env: Envelope) -> bool:
        """Keep the newest global weights; True if they differ from the ones held."""
        weights = env.weights()
        sha = env.weights_sha256()
        if sha == self.global_sha256:
            return False
        self.global_weights, self.global_sha256 = weights, sha
        self.state.save_global(weights, sha, env.round)
        log.info("global weights %s... for round %d received", sha[:12], env.round)
        return True

    # -- restart ----------------------------------------------------------------------
    def restore(self) -> None:
        """Load the model and global weights saved by an earlier run, if they verify."""
        saved = self.state.load_model()
        if saved is not None:
            try:
                self._use(self._load(*saved))
            except EdgeFLError as exc:
                log.warning("ignoring the saved model: %s", exc)
        glob = self.state.load_global()
        if glob is not None:
            self.global_weights, self.global_sha256 = glob.weights, glob.sha256
