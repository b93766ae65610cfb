"""LoRA adapters on a resident pipeline: loaded on first use, kept (least recently used out beyond the
family's budget), set per call. No Ray here; the generator calls `activate` under its lock, so one
call's adapters are what its pipeline call runs with, whatever the call before it used.

Two ways to hold them, by whether the denoiser is compiled:
- eager: each adapter is injected once through diffusers' `load_lora_weights` (peft) under its own
  name; a call enables the ones it names with their scales (`set_adapters`), a call with none
  disables LoRA (`disable_lora`: the base layers alone, the base model's pixels exactly);
- compiled: diffusers' hot-swap. Before compiling, `enable_lora_hotswap(target_rank)` and
  `hotswap_slots` zero adapters at that rank on every linear layer of the denoiser, always active
  with tensor scalings; a call copies its adapters' weights into slots (`hotswap=True`) and fills
  the scalings (0 for an unused slot), so the compiled graphs never change and nothing recompiles.
  Their state dicts are kept on the device for the next swap.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from cluster.errors import ImageGenError
from cluster.work import AdapterUse
from models.adapter_files import locate, sha256_of
from models.adapters import CODE, FamilySettings

GIB = 2**30


@dataclass
class Loaded:
    name: str  # the adapter's name inside the pipeline (eager) or "" (held as a state dict)
    bytes: int
    state: tuple | None = None  # compiled: (state_dict, network_alphas, metadata) for hot-swapping


@dataclass
class Switch:
    """What one call's `activate` did: recorded with its images and in the replica's stats."""

    loaded: list[str] = field(default_factory=list)  # adapters read from disk for this call
    load_seconds: float = 0.0
    switch_seconds: float = 0.0  # setting the adapters and scales (and hot-swapping), loads excluded
    changed: bool = False  # the call runs with other adapters or scales than the call before it

    def as_dict(self) -> dict:
        return {"loaded": list(self.loaded), "load_seconds": round(self.load_seconds, 6),
                "switch_seconds": round(self.switch_seconds, 6), "changed": self.changed}


class AdapterManager:
    def __init__(self, pipe, model_id: str, settings: FamilySettings | None, cache_root: Path, torch,
                 blocked: str = ""):
        """`settings`: the model family's adapter settings (None: it takes no adapters); `blocked`:
        why this replica's memory plan cannot take adapters ("" when it can)."""
        self.pipe = pipe
        self.model_id = model_id
        self.settings = settings
        self.cache_root = cache_root
        self._torch = torch
        self.blocked = blocked
        self.budget_bytes = int(settings.budget_gb * GIB) if settings else 0
        self._loaded: OrderedDict[tuple[str, str], Loaded] = OrderedDict()
        self._active: tuple = ()
        self._slots: list[tuple[str, str] | None] = []  # compiled: the adapter each hot-swap slot holds
        self._slot_modules: list[list] = []
        self._slot_base: list[dict] = []  # per slot: LoRA layer -> its adapter's alpha/rank scaling
        self.slot_bytes = 0
        self.loads = 0
        self.load_seconds = 0.0
        self.switches = 0
        self.last_switch: Switch | None = None

    @property
    def hotswap(self) -> bool:
        return bool(self._slots)

    # --- compiled replicas ------------------------------------------------------------------

    def prepare_compiled(self) -> None:
        """Hot-swap slots on the denoiser, before it is compiled (the caller compiles next)."""
        if self.settings is None or self.blocked:
            return
        from peft.tuners.lora import LoraLayer
        from peft.utils.hotswap import prepare_model_for_compiled_hotswap

        torch, pipe = self._torch, self.pipe
        rank, slots = self.settings.hotswap_rank, self.settings.hotswap_slots
        denoiser = pipe.transformer
        linears = [(n, m) for n, m in denoiser.named_modules() if isinstance(m, torch.nn.Linear)]
        dtype = next(denoiser.parameters()).dtype
        pipe.enable_lora_hotswap(target_rank=rank)
        names = [f"slot{k}" for k in range(slots)]
        for name in names:
            zero = {}
            for path, module in linears:
                zero[f"transformer.{path}.lora_A.weight"] = torch.zeros(rank, module.in_features, dtype=dtype)
                zero[f"transformer.{path}.lora_B.weight"] = torch.zeros(module.out_features, rank, dtype=dtype)
            pipe.load_lora_weights(zero, adapter_name=name)
        denoiser.set_adapters(names, [1.0] * slots)
        # set_adapters wrote float scalings; as tensors they are graph inputs, not constants
        prepare_model_for_compiled_hotswap(denoiser, target_rank=rank)
        for name in names:
            modules = [m for m in denoiser.modules() if isinstance(m, LoraLayer) and name in m.scaling]
            self._slot_modules.append(modules)
            self._slot_base.append({})
            for module in modules:
                module.scaling[name].fill_(0.0)
        self._slots = [None] * slots
        self.slot_bytes = sum(p.numel() * p.element_size() for n, p in denoiser.named_parameters() if ".slot" in n)

    # --- per call ------------------------------------------------------------------------

    def activate(self, uses: tuple[AdapterUse, ...]) -> Switch:
        """Make the pipeline run with exactly `uses` (none: the base model)."""
        switch = Switch()
        if uses:
            self._check_usable(uses)
        started = time.perf_counter()
        for use in uses:
            self._ensure_loaded(use, switch, {u.sha256 for u in uses})
        wanted = tuple((use.id, use.sha256, use.scale) for use in uses)
        if wanted != self._active:
            if self.hotswap:
                self._fill_slots(uses)
            else:
                self._set_eager(uses)
            self._active = wanted
            self.switches += 1
            switch.changed = True
        for use in uses:
            self._loaded.move_to_end((use.id, use.sha256))
        switch.switch_seconds = max(0.0, time.perf_counter() - started - switch.load_seconds)
        self.last_switch = switch
        return switch

    def _check_usable(self, uses: tuple[AdapterUse, ...]) -> None:
        names = ", ".join(u.id for u in uses)
        if self.settings is None:
            raise ImageGenError(CODE, f"model {self.model_id!r} takes no adapters ({names}).")
        if self.blocked:
            raise ImageGenError(CODE, f"model {self.model_id!r}: this replica cannot take adapters ({names}): "
                                      f"{self.blocked}.")
        if self.hotswap and len(uses) > len(self._slots):
            raise ImageGenError(CODE, f"model {self.model_id!r} is compiled with {len(self._slots)} hot-swap slot(s); "
                                      f"this call combines {len(uses)} adapters ({names}). Combine fewer, or raise "
                                      "hotswap_slots of its family in adapters.yaml.")

    def _set_eager(self, uses: tuple[AdapterUse, ...]) -> None:
        if not uses:
            self.pipe.disable_lora()
            return
        self.pipe.enable_lora()  # set_adapters alone leaves a disabled LoRA disabled
        self.pipe.set_adapters([self._loaded[(u.id, u.sha256)].name for u in uses], [u.scale for u in uses])

    def _fill_slots(self, uses: tuple[AdapterUse, ...]) -> None:
        keys = [(u.id, u.sha256) for u in uses]
        held = {key: k for k, key in enumerate(self._slots) if key in keys}
        # empty slots first, then those holding adapters this call does not use
        free = sorted((k for k, key in enumerate(self._slots) if key not in keys), key=lambda k: self._slots[k] is not None)
        for use, key in zip(uses, keys):
            if key not in held:
                slot = free.pop(0)
                self._swap_into(slot, key)
                held[key] = slot
        scales = {held[(u.id, u.sha256)]: u.scale for u in uses}
        for slot, modules in enumerate(self._slot_modules):
            scale, base = scales.get(slot, 0.0), self._slot_base[slot]
            for module in modules:
                module.scaling[f"slot{slot}"].fill_(base.get(module, 0.0) * scale)

    def _swap_into(self, slot: int, key: tuple[str, str]) -> None:
        state, alphas, metadata = self._loaded[key].state
        name = f"slot{slot}"
        try:
            self.pipe.load_lora_into_transformer(dict(state), network_alphas=alphas, transformer=self.pipe.transformer,
                                                 adapter_name=name, metadata=metadata, _pipeline=self.pipe,
                                                 hotswap=True)
        except (ValueError, RuntimeError, KeyError) as exc:
            self._slots[slot] = None  # its weights may be half copied: nothing may use them
            self._slot_base[slot] = {}
            raise ImageGenError(CODE, f"adapter {key[0]!r} cannot be hot-swapped into compiled {self.model_id!r}: "
                                      f"{_one_line(exc)} (set compile: off for the model to load it eagerly).") from None
        # the swap set each adapted layer's scaling to this adapter's alpha/rank; its scale multiplies it
        self._slot_base[slot] = {m: float(m.scaling[name]) for m in self._slot_modules[slot]}
        self._slots[slot] = key

    # --- loading and the budget -----------------------------------------------------------------

    def _ensure_loaded(self, use: AdapterUse, switch: Switch, keep: set[str]) -> None:
        key = (use.id, use.sha256)
        if key in self._loaded:
            return
        started = time.perf_counter()
        path = locate(use.source, use.weight_name, use.revision, self.cache_root)
        if path is None:
            raise ImageGenError(CODE, f"adapter {use.id!r}: its weights ({use.source}) are not on this replica's node; "
                                      "fetch them there too (runs never download).")
        found = sha256_of(path)
        if found != use.sha256:
            raise ImageGenError(CODE, f"adapter {use.id!r}: the file on this replica's node ({path}) has sha256 "
                                      f"{found[:12]}…, the driver planned {use.sha256[:12]}…; make the nodes hold the "
                                      "same file.")
        self._evict(path.stat().st_size, keep)
        loaded = self._load_state(use, path) if self.hotswap else self._load_eager(use, path)
        self._loaded[key] = loaded
        self._evict(0, keep)
        seconds = time.perf_counter() - started
        switch.loaded.append(use.id)
        switch.load_seconds += seconds
        self.loads += 1
        self.load_seconds += seconds

    def _load_eager(self, use: AdapterUse, path: Path) -> Loaded:
        name = f"{re.sub(r'[^A-Za-z0-9_]', '_', use.id)}_{use.sha256[:10]}"
        try:
            self.pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name,
                                        local_files_only=True)
        except (ValueError, RuntimeError, KeyError, OSError) as exc:
            self._delete(name)
            raise ImageGenError(CODE, f"adapter {use.id!r} does not load into {self.model_id!r}: "
                                      f"{_one_line(exc)}") from None
        self._active = ("loaded",)  # loading may change which adapters are active: set them again
        return Loaded(name, self._param_bytes(f".{name}."))

    def _load_state(self, use: AdapterUse, path: Path) -> Loaded:
        device = next(self.pipe.transformer.parameters()).device
        state, alphas, metadata = self.pipe.lora_state_dict(str(path.parent), weight_name=path.name,
                                                            local_files_only=True, return_alphas=True,
                                                            return_lora_metadata=True)
        other = sorted({k.split(".", 1)[0] for k in state if not k.startswith("transformer.")})
        if other:
            raise ImageGenError(CODE, f"adapter {use.id!r} adapts {', '.join(other)} too, which diffusers cannot "
                                      f"hot-swap; compiled {self.model_id!r} takes only denoiser adapters (set "
                                      "compile: off for the model to load it eagerly).")
        state = {k: v.to(device) for k, v in state.items()}
        return Loaded("", sum(v.numel() * v.element_size() for v in state.values()), (state, alphas, metadata))

    def _evict(self, incoming: int, keep: set[str]) -> None:
        """Least recently used adapters out until the budget holds `incoming` more bytes; the ones
        the current call needs stay whatever they weigh (the plan checked they fit the budget)."""
        room = self.budget_bytes - self.slot_bytes
        for key in list(self._loaded):
            if sum(entry.bytes for entry in self._loaded.values()) + incoming <= room:
                return
            if key[1] in keep or key in self._slots:
                continue
            entry = self._loaded.pop(key)
            if entry.name:
                self._delete(entry.name)
                self._active = ("evicted",)

    def _delete(self, name: str) -> None:
        try:
            self.pipe.delete_adapters([name])
        except (ValueError, KeyError):  # never injected (a load that failed early)
            pass

    def _param_bytes(self, marker: str) -> int:
        total = 0
        for component in self.pipe.components.values():
            if isinstance(component, self._torch.nn.Module):
                total += sum(p.numel() * p.element_size() for n, p in component.named_parameters() if marker in n)
        return total

    def stats(self) -> dict:
        """Read from the actor's control thread while a call may be loading: one copy, taken at once."""
        loaded = list(self._loaded.items())
        return {"loaded": [key[0] for key, _ in loaded], "bytes": sum(e.bytes for _, e in loaded),
                "budget_bytes": self.budget_bytes, "hotswap_slots": len(self._slots), "slot_bytes": self.slot_bytes,
                "loads": self.loads, "load_seconds": round(self.load_seconds, 6), "switches": self.switches,
                "last_switch": self.last_switch.as_dict() if self.last_switch else None}


def plan_blocks_adapters(plan) -> str:
    """Why a replica holding its model under `plan` cannot take adapters ("" when it can)."""
    if getattr(plan, "fp8", False):
        return (f"its memory plan ({plan.label}) stores weights in float8 through layerwise casting, which would "
                "store the LoRA matrices peft injects in float8 too, where they cannot compute; a run with "
                "--adapters plans its replicas without fp8 storage (release this warm replica: multi-image "
                "cluster down)")
    return ""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
