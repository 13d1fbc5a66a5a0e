"""One node's served versions, kept up to date event by event without rendering the node after each.

``NodeViewTracker(state, node)`` folds events (``projector.fold.FoldBuffer``,
the projector's fold) and, after each ``fold``, says what ``node`` is served:
exactly ``replay.engine.node_versions(state, node)`` of the state folded so
far (type_url -> name -> version), but re-rendering only the parts of the
view whose inputs the fold wrote.

How, with no mesh logic of its own: the view is a pure function of the
state (``projector.render``). Each part of it -- the names the node gets
(``Renderer.view``) and each named resource's version (``Renderer.version``:
a shared one's from its render inputs) -- is computed over a state whose maps note every key read
(``_Reading``); the fold reports every key it writes (``FoldBuffer``'s
``written``). A part is recomputed when a key it read was written (or, for a
part that iterated a whole map, when anything in that map was): what it did
not read cannot have changed its result. Each part gets its own
``Renderer``, so a value one part cached is never missing from another's
reads.

Invariants:
- ``versions()`` after any sequence of ``fold`` calls equals
  ``node_versions`` of the state ``fold_many`` gives for the same events
  (property-tested against it in tests/unit/replay/test_node_view.py).
- The tracker's cost per event is the fold's plus a set lookup per key
  written; a render happens only for the parts whose inputs changed.
- ``state()`` is the sealed state (``FoldBuffer.state``): the walk asks for
  it once, at its end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator

from events import types as t
from events.envelope import Logged
from projector.fold import FoldBuffer
from projector.render_view import Renderer
from projector.state import STATE_FIELDS, MeshState

if TYPE_CHECKING:  # loads cryptography: only a verifying replay pays for it
    from identity.verifier import Verifier

Versions = dict[str, dict[str, str]]

ANY = object()  # a read of a whole map (iterated, or its size): any write to that map counts
_VIEW = ("view",)  # the part that computes the node's names (resource parts are (type_url, name))


class _Reading:
    """A read-only face of one live map that notes each key read (``ANY`` for whole-map reads)."""

    __slots__ = ("_data", "_name", "_reads")

    def __init__(self, data, name: str, reads: set) -> None:
        self._data = data
        self._name = name
        self._reads = reads

    def get(self, key, default=None):
        self._reads.add((self._name, key))
        return self._data.get(key, default)

    def __getitem__(self, key):
        self._reads.add((self._name, key))
        return self._data[key]

    def __contains__(self, key) -> bool:
        self._reads.add((self._name, key))
        return key in self._data

    def _whole(self):
        self._reads.add((self._name, ANY))
        return self._data

    def __iter__(self):
        return iter(self._whole())

    def __len__(self) -> int:
        return len(self._whole())

    def keys(self):
        return self._whole().keys()

    def values(self):
        return self._whole().values()

    def items(self):
        return self._whole().items()


class NodeViewTracker:
    """Fold events from ``state``; ``versions()`` is what ``node`` is served after them."""

    def __init__(self, state: MeshState, node: str) -> None:
        self.node = node
        # field -> key -> the parts that read it (ANY: the parts that read the whole map)
        self._watch: dict[str, dict[object, set]] = {f: {} for f in STATE_FIELDS}
        self._reads: dict[tuple, set] = {}  # part -> what it read
        self._dirty: set = set()
        self._buffer = FoldBuffer(state, written=self._written)
        self._names: dict[str, tuple[str, ...]] = {}
        self._version: dict[tuple[str, str], str] = {}
        self._refresh_view()
        for u, names in self._names.items():
            for n in names:
                self._refresh_resource((u, n))
        self._versions = self._assemble()

    # ------------------------------------------------ what the fold wrote

    def _written(self, field: str, key: object) -> None:
        watchers = self._watch[field]
        hit = watchers.get(key)
        if hit:
            self._dirty |= hit
        hit = watchers.get(ANY)
        if hit:
            self._dirty |= hit

    # ------------------------------------------------ computing a part, noting its reads

    def _reading_state(self, reads: set) -> MeshState:
        live = self._buffer.live()
        return MeshState(**{f: _Reading(getattr(live, f), f, reads) for f in STATE_FIELDS})

    def _note(self, part: tuple, reads: set) -> None:
        self._forget(part)
        self._reads[part] = reads
        for field, key in reads:
            self._watch[field].setdefault(key, set()).add(part)

    def _forget(self, part: tuple) -> None:
        old = self._reads.pop(part, None)
        if old:
            for field, key in old:
                watchers = self._watch[field]
                parts = watchers.get(key)
                if parts is not None:
                    parts.discard(part)
                    if not parts:
                        del watchers[key]

    def _refresh_view(self) -> None:
        reads: set = set()
        self._names = Renderer(self._reading_state(reads)).view(self.node)
        self._note(_VIEW, reads)

    def _refresh_resource(self, part: tuple[str, str]) -> None:
        reads: set = set()
        self._version[part] = Renderer(self._reading_state(reads)).version(part[0], part[1], self.node)
        self._note(part, reads)

    def _assemble(self) -> Versions:
        return {u: {n: self._version[(u, n)] for n in names} for u, names in self._names.items()}

    # ------------------------------------------------ folding

    def fold(self, events: Iterable[Logged], verifier: Verifier | None = None) -> list[t.Decision]:
        """Fold ``events``; return their decisions. ``versions()`` then answers for the state after them."""
        decisions = self._buffer.fold(events, verifier)
        if self._dirty:
            self._update()
        return decisions

    def fold_each(self, events: list[Logged], verifier: Verifier | None = None
                  ) -> Iterator[tuple[int, list[t.Decision], Versions]]:
        """Fold ``events`` one at a time, as ``fold`` of each alone would; yield ``(i, decisions, view before)``
        for each event ``events[i]`` the fold refused or after which a part of the view was recomputed (while
        the generator is paused there, ``versions()`` is the view after it). An event not yielded was folded
        and left the view as it was: a walk over a long window pays for the others the fold alone."""
        fold = self._buffer.fold
        for i, logged in enumerate(events):
            decisions = fold((logged,), verifier)
            if self._dirty:
                before = self._versions
                self._update()
                yield i, decisions, before
            elif decisions:
                yield i, decisions, self._versions

    def _parts(self) -> set[tuple[str, str]]:
        return {(u, n) for u, names in self._names.items() for n in names}

    def _update(self) -> None:
        dirty, self._dirty = self._dirty, set()
        if _VIEW in dirty:
            dirty.discard(_VIEW)
            before = self._parts()
            self._refresh_view()
            now = self._parts()
            for part in before - now:
                self._forget(part)
                del self._version[part]
            dirty = (dirty & now) | (now - before)
        for part in dirty:
            self._refresh_resource(part)
        self._versions = self._assemble()

    def versions(self) -> Versions:
        """What the node is served now (``node_versions`` of the state folded so far); do not modify."""
        return self._versions

    def state(self) -> MeshState:
        return self._buffer.state()
