"""The weight-sharing network of a whole SearchSpace (Single Path One-Shot, Guo et al. 2020).

How choices share weights
-------------------------
Every tensor of every network the space can build is named by its *role*: the
unit (``stage2.3``), the unit type (``v1``/``v2``: different topologies, so
separate weights, as SPOS keeps separate choice blocks) and the position of
the layer inside the unit (``branch2.conv1`` = second conv of the main branch;
channel shuffles and activations hold no weights and are not counted, so the
roles do not move when a choice inserts a shuffle or an SE block). The
supernet holds, per role, one tensor of the largest shape any choice needs,
and a sampled network uses a slice of it:

* **widths, split ratio, stem / head channels** -- the leading channels
  (prefix slice, as in slimmable networks and OFA). Split moves the
  identity/branch boundary, so the branch's first 1x1 reads its prefix of the
  stored input weights; all splits keep training the same leading filters.
* **groups** -- a grouped 1x1 is the dense 1x1 with its off-diagonal blocks
  masked to zero: output channel ``o`` of group ``j`` takes the weights of
  input channels ``j*cin_g .. (j+1)*cin_g`` from the dense tensor. So every
  group choice trains the very weights the others use on the same
  input/output pairs, rather than each choice getting a fraction of the
  training (separate weights per group count would).
* **kernel** -- the centre of the largest kernel (OFA without the transform
  matrix): a 3x3 is the middle of the 7x7.
* **depth** -- unit ``i`` of a stage exists once; a network of depth ``d``
  runs units ``0..d-1`` and skips the rest.
* **SE, activation** -- SE weights are one more role (used only when chosen);
  activations have no weights.
* **per-unit choices** (SPOS's choice blocks, ``units`` in a space) -- roles are
  per unit position and unit type already, so a v2 and an xception unit at
  one position keep separate weights, and the kernel choices of one unit type
  share its largest kernel as above.
* **BatchNorm** -- as in SPOS, no affine parameters by default (statistics
  differ between paths, so a learned scale would be a compromise between
  them); running statistics are kept per role (prefix slice) but a candidate
  is scored only after :func:`~evaluators.supernet.bn.recalibrate_bn`.

The forward pass builds the sampled network's module tree on the ``meta``
device (no memory, no initialisation) and runs it with
:func:`torch.func.functional_call` on views/gathers of the shared tensors, so
the supernet computes exactly what :func:`search_space.build_model` would with
the inherited weights; :func:`extract_subnet` materialises that network.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from torch.func import functional_call

from search_space import Architecture, SearchSpace, build_model
from search_space.blocks import HeadBlock, StemBlock, UnitBlock
from search_space.errors import ShuffleNASError
from search_space.modules import UNIT_MODULES, build_head, build_stem, build_unit


class SupernetError(ShuffleNASError):
    """An architecture or checkpoint that does not fit the supernet."""


_UNITS = tuple(UNIT_MODULES.values())


def _role_paths(module: nn.Module, prefix: str = "", role: str = "") -> Iterator[tuple[str, str, nn.Module]]:
    """``(module path, role path, module)`` for every module holding tensors.

    Children of a Sequential are renamed ``<type><ordinal among siblings of that type>``,
    so an inserted ChannelShuffle or activation does not shift the role of later layers.
    """
    counts: dict[str, int] = {}
    for name, child in module.named_children():
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(module, nn.Sequential) and name.isdigit() and not isinstance(child, _UNITS):
            t = type(child).__name__.lower()
            r = f"{t}{counts.get(t, 0)}"
            counts[t] = counts.get(t, 0) + 1
        else:
            r = name
        rpath = f"{role}.{r}" if role else r
        if list(child.named_parameters(recurse=False)) or list(child.named_buffers(recurse=False)):
            yield path, rpath, child
        yield from _role_paths(child, path, rpath)


def tensor_roles(model: nn.Module) -> dict[str, tuple[str, nn.Module]]:
    """Map every ``state_dict`` key of a built network to ``(role key, owning module)``."""
    out: dict[str, tuple[str, nn.Module]] = {}
    arch: Architecture = model.arch
    unit_type = {(f"stage{si + 2}", str(ui)): u.unit
                 for si, st in enumerate(arch.stages) for ui, u in enumerate(st.unit_list())}
    for path, role, mod in _role_paths(model):
        parts = role.split(".")
        if tuple(parts[:2]) in unit_type:  # stage2.<i>.rest -> stage2.<i>.<unit>.rest
            role = ".".join([parts[0], parts[1], unit_type[tuple(parts[:2])], *parts[2:]])
        for name, _ in itertools.chain(mod.named_parameters(recurse=False), mod.named_buffers(recurse=False)):
            out[f"{path}.{name}"] = (f"{role}.{name}", mod)
    return out


def _meta_model(arch: Architecture) -> nn.Module:
    with torch.device("meta"):
        return build_model(arch)


def _max_shapes(space: SearchSpace) -> dict[str, tuple[int, ...]]:
    """Largest shape of every role over the space (groups=1: the dense tensor holds all group choices)."""
    spec = space.spec
    shapes: dict[str, tuple[int, ...]] = {}

    def add(module: nn.Module, role_prefix: str) -> None:
        for _, role, mod in _role_paths(module):
            for name, t in itertools.chain(mod.named_parameters(recurse=False), mod.named_buffers(recurse=False)):
                key = f"{role_prefix}.{role}.{name}" if role_prefix else f"{role}.{name}"
                old = shapes.get(key, (0,) * t.dim())
                shapes[key] = tuple(max(a, b) for a, b in zip(old, t.shape))

    s = spec.stem
    kmax_stem = max(s.kernel)
    with torch.device("meta"):
        for c in s.channels:
            block = StemBlock(spec.in_channels, c, kmax_stem, 1, False, spec.input_size)
            add(nn.ModuleDict({"conv1": build_stem(block)}), "")
        in_opts = set(s.channels)
        for si, st in enumerate(spec.stages):
            for ui in range(max(st.depth)):
                # per (unit type, width, split, middle width): the largest kernel, SE if ever chosen
                largest: dict[tuple, tuple[int, bool]] = {}
                for c, u in space.unit_choices(si, ui):
                    k, se = largest.get((u.unit, c, u.split, u.mid_channels), (0, False))
                    largest[(u.unit, c, u.split, u.mid_channels)] = (max(k, u.kernel), se or u.se)
                for (unit, c, sp, mid), (kmax, se) in largest.items():
                    for cin in (sorted(in_opts) if ui == 0 else [c]):
                        b = UnitBlock(unit, 2 if ui == 0 else 1, cin, c, sp, 1, kmax, se, "relu", 8,
                                      first_ungrouped=(unit == "v1" and si == 0 and ui == 0), mid=mid)
                        if b.problem() is None:
                            add(build_unit(b), f"stage{si + 2}.{ui}.{unit}")
            in_opts = set(st.channels)
        for cin, h in itertools.product(sorted(in_opts), spec.head_channels):
            conv5, fc = build_head(HeadBlock(cin, h, spec.num_classes, 1))
            add(nn.ModuleDict({"conv5": conv5, "fc": fc}), "")
    return shapes


@dataclass(frozen=True)
class _Slice:
    """How to cut one subnet tensor out of its role's max tensor."""

    subnet_key: str
    role: str
    shape: tuple[int, ...]
    groups: int  # >1: gather the block-diagonal of a dense grouped conv
    is_buffer: bool


def _take(full: torch.Tensor, sl: _Slice) -> torch.Tensor:
    shape = sl.shape
    if full.dim() == 0:
        return full
    if full.dim() == 4:
        o, cin_g, kh, kw = shape
        oh, ow = (full.shape[2] - kh) // 2, (full.shape[3] - kw) // 2
        w = full[:o, :, oh:oh + kh, ow:ow + kw]
        if sl.groups > 1 and full.shape[1] > 1:
            per = o // sl.groups
            idx = (torch.arange(o) // per).unsqueeze(1) * cin_g + torch.arange(cin_g)
            return w[torch.arange(o).unsqueeze(1), idx]
        return w[:, :cin_g]
    return full[tuple(slice(0, n) for n in shape)]


class Supernet(nn.Module):
    """All networks of ``space`` in one set of weights; ``forward(x, arch)`` runs one of them."""

    def __init__(self, space: SearchSpace, *, affine_bn: bool = False):
        super().__init__()
        self.space = space
        self.affine_bn = affine_bn
        self.weights = nn.ParameterDict()
        self.stats = nn.Module()  # BatchNorm running statistics, one set per role
        for role, shape in sorted(_max_shapes(space).items()):
            name = role.replace(".", "/")
            leaf = role.rsplit(".", 1)[1]
            if leaf in ("running_mean", "running_var", "num_batches_tracked"):
                val = {"running_mean": torch.zeros, "running_var": torch.ones}.get(
                    leaf, lambda *s: torch.zeros((), dtype=torch.long))(*shape)
                self.stats.register_buffer(name, val)
            elif self._is_bn(role):
                if affine_bn:
                    self.weights[name] = nn.Parameter(torch.ones(shape) if leaf == "weight" else torch.zeros(shape))
            else:
                self.weights[name] = nn.Parameter(self._init(role, shape))
        self._plans: OrderedDict[str, tuple[nn.Module, list[_Slice]]] = OrderedDict()

    @staticmethod
    def _is_bn(role: str) -> bool:
        return role.rsplit(".", 2)[-2].startswith("batchnorm")

    @staticmethod
    def _init(role: str, shape: tuple[int, ...]) -> torch.Tensor:
        t = torch.empty(shape)
        if len(shape) == 4:  # fan_in: independent of how many output channels a path uses
            nn.init.kaiming_normal_(t, mode="fan_in", nonlinearity="relu")
        elif len(shape) == 2:
            nn.init.normal_(t, 0, 0.01)
        else:
            nn.init.zeros_(t)
        return t

    # ---- which tensors a sampled network uses -------------------------------
    def check(self, arch: Architecture) -> None:
        """Raise SupernetError unless ``arch`` is a point of the supernet's space."""
        spec = self.space.spec
        wrong = [f"{f}={getattr(arch, f)} (supernet: {getattr(spec, f)})"
                 for f in ("input_size", "in_channels", "num_classes") if getattr(arch, f) != getattr(spec, f)]
        if wrong:
            raise SupernetError(f"architecture {arch.name or '(unnamed)'} does not fit the supernet's space "
                                f"{self.space.name!r}: {', '.join(wrong)}; train a supernet for it")
        try:
            self.space.params_of(arch)
        except ShuffleNASError as exc:
            raise SupernetError(f"architecture is outside the supernet's space {self.space.name!r}: {exc}") from None

    def _plan(self, arch: Architecture) -> tuple[nn.Module, list[_Slice]]:
        key = arch.model_copy(update={"name": None}).to_json()
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        self.check(arch)
        template = _meta_model(arch)
        buffers = {k for k, _ in template.named_buffers()}
        plan = []
        for key_, (role, mod) in tensor_roles(template).items():
            t = template.get_parameter(key_) if key_ not in buffers else template.get_buffer(key_)
            groups = mod.groups if isinstance(mod, nn.Conv2d) else 1
            plan.append(_Slice(key_, role, tuple(t.shape), groups, key_ in buffers))
        self._plans[key] = (template, plan)
        if len(self._plans) > 256:
            self._plans.popitem(last=False)
        return template, plan

    def _full(self, role: str) -> torch.Tensor | None:
        name = role.replace(".", "/")
        if name in self.weights:
            return self.weights[name]
        return getattr(self.stats, name, None)

    def subnet_tensors(self, arch: Architecture) -> dict[str, torch.Tensor]:
        """The sampled network's ``state_dict`` as views/gathers of the shared tensors (autograd flows back)."""
        _, plan = self._plan(arch)
        out = {}
        device = next(iter(self.weights.values())).device
        for sl in plan:
            full = self._full(sl.role)
            if full is None:  # affine-free BN: scale 1, shift 0 (on the supernet's device)
                leaf = sl.role.rsplit(".", 1)[1]
                out[sl.subnet_key] = (torch.ones if leaf == "weight" else torch.zeros)(sl.shape, device=device)
            else:
                out[sl.subnet_key] = _take(full, sl)
        return out

    def forward(self, x: torch.Tensor, arch: Architecture) -> torch.Tensor:
        template, _ = self._plan(arch)
        template.train(self.training)
        return functional_call(template, self.subnet_tensors(arch), (x,))


def extract_subnet(supernet: Supernet, arch: Architecture) -> nn.Module:
    """A standalone ``build_model(arch)`` network holding the weights ``arch`` inherits."""
    supernet.check(arch)
    model = build_model(arch)
    with torch.no_grad():
        tensors = {k: v.detach().clone() for k, v in supernet.subnet_tensors(arch).items()}
    model.load_state_dict(tensors, strict=True)
    model.train(supernet.training)
    return model
