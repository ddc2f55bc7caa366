"""The policy engine: rules from a YAML file decide whether an invocation runs, needs a person, or not.

A policy file (docs/gateway.md, *Policy*) has a ``default`` decision, optional key ``groups`` and a
list of ``rules``. Each rule has a ``name``, a ``decision`` (``allow``, ``deny``, ``require_approval``)
and conditions, all of which must hold for the rule to match (a list means "any of"):

* on the capability: ``capability`` (name globs), ``category``, ``tier``, ``tags`` (any tag);
* on the caller: ``keys`` (key-name globs) and/or ``groups`` (either one is enough);
* on the inputs: ``inputs: {NAME: MATCHER}``, a matcher being a glob string or one of
  ``{glob: …}``, ``{regex: …}`` (searched anywhere), ``{host: …}`` (glob on a URL's host) or
  ``{under: …}`` (a path inside one of these directories);
* ``unless:`` the same conditions again: the rule does not match when they all hold.

**Paths.** An input that names a workspace path (``_PATH_INPUTS``: ``path``, ``src``, ``dst`` of the
filesystem capabilities, ``cwd`` of process.run) is matched, by every kind of matcher, as its canonical
``/workspace/...`` path, never as the text given: once normalised lexically (``./``, ``//``, ``x/..``,
relative), and once with its symlinks resolved as the capability resolves them (a policy loaded with
a ``Workspace``). The policy is decided for both and the stricter decision counts, so a link into a
denied tree is denied, and an allow covers a path only if both forms are inside it.

**Evaluation order.** Every matching rule counts and the most restrictive decision wins:
``deny`` > ``require_approval`` > ``allow``; among matching rules with the same decision the first in
the file is the one reported. An invocation no rule matches gets ``default``. So a deny is never
undone by an allow, whatever the order of the rules.

**Cost.** Rules are compiled once when the file is loaded (globs and regexes precompiled). For each
(capability, key) pair the engine computes, once, the rules whose capability and key conditions hold,
ordered by severity, with consecutive rules that differ only in one input's patterns merged into one
test; an invocation then only runs the input matchers of those few candidates and stops at the first
that matches. Each input's view (text, URL host, normalised path) is computed once per invocation.
Patterns with groups are tested on their own, never merged: a backreference (``\\1``) counts groups
from the start of its own pattern.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import logging
import operator
import posixpath
import re
import shlex
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml

from ..capabilities.workspace import Workspace
from ..config import PolicyConfig
from ..core.models import CapabilityDefinition
from ..errors import GatewayError

__all__ = [
    "DEFAULT_POLICY_RESOURCE",
    "Decision",
    "Policy",
    "PolicyError",
    "configured_policy",
    "load_policy",
    "parse_policy",
    "shipped_default_text",
]

DecisionName = Literal["allow", "deny", "require_approval"]
DECISIONS: tuple[DecisionName, ...] = ("allow", "deny", "require_approval")
_SEVERITY = {"deny": 0, "require_approval": 1, "allow": 2}
DEFAULT_POLICY_RESOURCE = "default-policy.yaml"
WORKSPACE = "/workspace"
_RULE_KEYS = frozenset(
    {
        "name",
        "decision",
        "why",
        "capability",
        "category",
        "tier",
        "tags",
        "keys",
        "groups",
        "inputs",
        "unless",
    }
)
_CONDITION_KEYS = frozenset({"capability", "category", "tier", "tags", "keys", "groups", "inputs"})
_MATCHER_KINDS = ("glob", "regex", "host", "under")
# The inputs that name a path in /workspace, by capability, and whether the capability follows a
# symlink in the last component (capabilities/_fs_ops.py, process.py): stat, delete and move act on
# the link itself, so what it points to is not what they touch.
_PATH_INPUTS: dict[str, tuple[tuple[str, bool], ...]] = {
    "filesystem.read": (("path", True),),
    "filesystem.write": (("path", True),),
    "filesystem.list": (("path", True),),
    "filesystem.mkdir": (("path", True),),
    "filesystem.stat": (("path", False),),
    "filesystem.delete": (("path", False),),
    "filesystem.move": (("src", False), ("dst", False)),
    "process.run": (("cwd", True),),
}
log = logging.getLogger(__name__)


class PolicyError(Exception):
    """A policy file that cannot be used: ``source``, ``line`` (1-based, or None) and ``reason``.

    ``hint`` says what to do when that is not plain from the reason (e.g. a missing file).
    """

    def __init__(self, source: str, line: int | None, reason: str, hint: str | None = None) -> None:
        self.source = source
        self.line = line
        self.reason = reason
        self.hint = hint
        where = f"{source}, line {line}" if line is not None else source
        super().__init__(f"{where}: {reason}")

    def one_line(self) -> str:
        """The error as one line, with its hint if it has one (the log line of a refused reload)."""
        return f"{self}; hint: {self.hint}" if self.hint else str(self)


@dataclass(frozen=True)
class Decision:
    """What the policy decided for one invocation, and which rule decided it."""

    decision: DecisionName
    rule: str
    """The deciding rule's name, or ``default`` when no rule matched."""
    why: str
    line: int | None = None


# --- YAML with line numbers -----------------------------------------------------------------------


class _Map(dict[str, Any]):
    line: int = 0
    lines: dict[str, int]


class _Seq(list[Any]):
    line: int = 0
    lines: list[int]


class _Loader(yaml.SafeLoader):
    pass


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    out = _Map()
    out.line, out.lines = node.start_mark.line + 1, {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str):
            raise _Bad(line, f"keys must be strings, got {key!r}")
        if key in out:
            raise _Bad(line, f"duplicate key {key!r}")
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = line
    return out


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> _Seq:
    out = _Seq(loader.construct_object(child, deep=True) for child in node.value)
    out.line, out.lines = node.start_mark.line + 1, [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)


class _Bad(Exception):
    def __init__(self, line: int | None, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


def _line_of(container: object, key: str | int, fallback: int | None = None) -> int | None:
    if isinstance(container, _Map) and isinstance(key, str):
        return container.lines.get(key, container.line)
    if isinstance(container, _Seq) and isinstance(key, int) and key < len(container.lines):
        return container.lines[key]
    return getattr(container, "line", fallback)


# --- compiled matchers ------------------------------------------------------------------------------


def _glob(pattern: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern), re.IGNORECASE if ignore_case else 0)


def _as_text(value: object) -> str:
    """An input value as the text matchers see: strings as is, argv lists joined shell-style."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return shlex.join(str(v) for v in value)
    return json.dumps(value, sort_keys=True, default=str)


def _host(value: str) -> str | None:
    try:
        return urllib.parse.urlsplit(value.strip()).hostname
    except ValueError:
        return None


def _agent_path(value: str) -> str:
    """``value`` as a ``/workspace/...`` path, normalised lexically (no file system access)."""
    # normpath keeps a leading "//" (POSIX leaves its meaning open): one slash, as the kernel reads it.
    path = "/" + value.lstrip("/") if value.startswith("/") else posixpath.join(WORKSPACE, value)
    return posixpath.normpath(path)


# An input matcher looks at one view of the input's value (computed once per invocation and shared
# by every rule that looks at the same input the same way) and tests it with precompiled patterns.
View = Literal["text", "host", "path"]


class InputTest(NamedTuple):
    name: str
    view: View
    test: Callable[[str], object]  # returns something truthy on a match
    kind: str
    patterns: tuple[str, ...]


_VIEWS: dict[View, Callable[[object], str | None]] = {
    "text": _as_text,
    "host": lambda v: _host(v) if isinstance(v, str) else None,
    "path": lambda v: _agent_path(v).rstrip("/") + "/" if isinstance(v, str) else None,
}
_MISSING = object()


def _any_of(
    patterns: list[str], method: Literal["match", "search"], flags: int = 0
) -> Callable[[str], object]:
    """``match``/``search`` that matches where any of ``patterns`` does, with as few regexes as safe.

    Patterns without groups are merged into one alternation. A pattern with groups is tested on its
    own: in an alternation its groups would be renumbered, and its backreferences (``\\1``,
    ``(?(1)…)``) would then name another pattern's group and stop matching.
    """
    compiled = [re.compile(p, flags) for p in patterns]
    plain = [p for p, regex in zip(patterns, compiled, strict=True) if not regex.groups]
    tests = [getattr(regex, method) for regex in compiled if regex.groups]
    tests += _merged(plain, method, flags)
    if len(tests) == 1:
        return tests[0]  # type: ignore[no-any-return]
    return lambda text: any(test(text) for test in tests)


def _merged(
    patterns: list[str], method: Literal["match", "search"], flags: int
) -> list[Callable[[str], object]]:
    """One test for ``patterns`` (none of them with groups) if they can be merged, else one each."""
    if len(patterns) > 1:
        try:
            return [getattr(re.compile("|".join(f"(?:{p})" for p in patterns), flags), method)]
        except re.error:  # e.g. a pattern with global inline flags, "(?i)…", cannot be nested
            pass
    return [getattr(re.compile(p, flags), method) for p in patterns]


def _input_test(name: str, kind: str, patterns: list[str]) -> InputTest:
    if kind == "glob":
        test = _any_of([fnmatch.translate(p) for p in patterns], "match")
        return InputTest(name, "text", test, kind, tuple(patterns))
    if kind == "regex":
        return InputTest(name, "text", _any_of(patterns, "search"), kind, tuple(patterns))
    if kind == "host":
        test = _any_of([fnmatch.translate(p) for p in patterns], "match", re.IGNORECASE)
        return InputTest(name, "host", test, kind, tuple(patterns))
    # The path view ends in "/", so one C-level startswith covers the directory itself and below.
    prefixes = tuple(sorted({_agent_path(p).rstrip("/") + "/" for p in patterns}))
    return InputTest(name, "path", operator.methodcaller("startswith", prefixes), kind, tuple(patterns))


@dataclass(frozen=True)
class _Conditions:
    capabilities: tuple[re.Pattern[str], ...] = ()
    categories: frozenset[str] | None = None
    tiers: frozenset[str] | None = None
    tags: frozenset[str] | None = None
    keys: tuple[re.Pattern[str], ...] | None = None
    inputs: tuple[InputTest, ...] = ()

    def capability_holds(self, definition: CapabilityDefinition) -> bool:
        return (
            (not self.capabilities or any(p.match(definition.name) for p in self.capabilities))
            and (self.categories is None or definition.category in self.categories)
            and (self.tiers is None or definition.permission_tier in self.tiers)
            and (self.tags is None or not self.tags.isdisjoint(definition.tags))
        )

    def key_holds(self, key_name: str) -> bool:
        return self.keys is None or any(p.match(key_name) for p in self.keys)

    def inputs_hold(self, inputs: Mapping[str, Any], views: dict[tuple[str, View], Any]) -> bool:
        """Whether every input matcher holds; ``views`` caches each input's views for this invocation."""
        for name, kind, test, _, _ in self.inputs:
            seen = views.get((name, kind), _MISSING)
            if seen is _MISSING:
                value = inputs.get(name)
                seen = views[(name, kind)] = None if value is None else _VIEWS[kind](value)
            if seen is None or not test(seen):
                return False
        return True

    def all_hold(
        self,
        key_name: str,
        definition: CapabilityDefinition,
        inputs: Mapping[str, Any],
        views: dict[tuple[str, View], Any],
    ) -> bool:
        return (
            self.capability_holds(definition) and self.key_holds(key_name) and self.inputs_hold(inputs, views)
        )


@dataclass(frozen=True, eq=False)
class Rule:
    name: str
    decision: DecisionName
    why: str
    line: int
    order: int
    when: _Conditions
    unless: _Conditions | None = None

    @functools.cached_property
    def verdict(self) -> Decision:
        return Decision(self.decision, self.name, self.why, self.line)


# --- the policy -------------------------------------------------------------------------------------

# (input tests, unless, verdict, members): members is set for several consecutive rules merged into
# one combined test; when it matches, the first member whose own test matches decides.
_Member = tuple[Callable[[str], object], Decision]
_Candidate = tuple[tuple[InputTest, ...], _Conditions | None, Decision, tuple[_Member, ...] | None]
# The candidates of one (capability, key) pair, and the path inputs (name, follows the final link)
# that some of them test: only those are canonicalised, and resolved on disk, per invocation.
_Selection = tuple[tuple[_Candidate, ...], tuple[tuple[str, bool], ...]]
_Views = dict[tuple[str, View], Any]


@dataclass
class Policy:
    """A compiled policy: ``decide()`` is what every invocation pays."""

    source: str
    default: DecisionName
    rules: tuple[Rule, ...]
    groups: dict[str, tuple[str, ...]]
    text: str = ""
    workspace: Workspace | None = None
    """Where path inputs are resolved through their symlinks; without it they are normalised only."""
    _candidates: dict[tuple[str, str], _Selection] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._default_verdict = Decision(
            self.default, "default", "no rule matched; the policy's default applies"
        )

    def decide(self, key_name: str, definition: CapabilityDefinition, inputs: Mapping[str, Any]) -> Decision:
        """The decision for ``key_name`` invoking ``definition`` with (validated) ``inputs``."""
        cache_key = (definition.name, key_name)
        selection = self._candidates.get(cache_key)
        if selection is None:
            selection = self._candidates[cache_key] = self._select(key_name, definition)
        candidates, path_inputs = selection
        if not path_inputs:
            return self._first_match(candidates, key_name, definition, inputs, {})
        # The path as given (normalised) and as its symlinks resolve: the stricter decision counts.
        given, resolved = self._path_views(path_inputs, inputs)
        verdict = self._first_match(candidates, key_name, definition, inputs, given)
        if resolved is None or verdict.decision == "deny":
            return verdict
        other = self._first_match(candidates, key_name, definition, inputs, resolved)
        return other if _SEVERITY[other.decision] < _SEVERITY[verdict.decision] else verdict

    def may_allow(self, key_name: str, definition: CapabilityDefinition) -> bool:
        """Whether some invocation of ``definition`` by ``key_name`` could be allowed (at once or
        after an approval): false only when a deny applies whatever the inputs. What an MCP client is
        offered as tools; the decision for each call is still :meth:`decide`'s."""
        selection = self._candidates.get((definition.name, key_name))
        if selection is None:
            selection = self._candidates[(definition.name, key_name)] = self._select(key_name, definition)
        candidates, _ = selection
        for input_tests, unless, verdict, members in candidates:  # most restrictive first
            if verdict.decision == "deny":
                if not input_tests and unless is None and members is None:
                    return False  # every invocation stops here
                continue
            return True  # an allow or require_approval some inputs reach before any deny
        return self.default != "deny"

    def _first_match(
        self,
        candidates: tuple[_Candidate, ...],
        key_name: str,
        definition: CapabilityDefinition,
        inputs: Mapping[str, Any],
        views: _Views,
    ) -> Decision:
        """The verdict of the first candidate whose input matchers hold (the most restrictive)."""
        # The hot loop, inlined (no call per rule): the input matchers of each candidate in turn.
        for input_tests, unless, verdict, members in candidates:
            seen: Any = None
            for name, kind, test, _, _ in input_tests:
                seen = views.get((name, kind), _MISSING)
                if seen is _MISSING:
                    value = inputs.get(name)
                    seen = views[(name, kind)] = None if value is None else _VIEWS[kind](value)
                if seen is None or not test(seen):
                    break
            else:
                if members is not None:
                    return next(
                        member_verdict for member_test, member_verdict in members if member_test(seen)
                    )
                if unless is None or not unless.all_hold(key_name, definition, inputs, views):
                    return verdict
        return self._default_verdict

    def _select(self, key_name: str, definition: CapabilityDefinition) -> _Selection:
        """The rules whose capability and key conditions hold, most restrictive first, then file order."""
        matching = [
            r for r in self.rules if r.when.capability_holds(definition) and r.when.key_holds(key_name)
        ]
        matching.sort(key=lambda r: (_SEVERITY[r.decision], r.order))
        tested = {
            test.name for r in matching for c in (r.when, r.unless) if c is not None for test in c.inputs
        }
        path_inputs = tuple(p for p in _PATH_INPUTS.get(definition.name, ()) if p[0] in tested)
        return tuple(_merge(matching)), path_inputs

    def _path_views(
        self, path_inputs: tuple[tuple[str, bool], ...], inputs: Mapping[str, Any]
    ) -> tuple[_Views, _Views | None]:
        """The views of the path inputs as given (normalised), and as resolved if any of them differs."""
        given: _Views = {}
        resolved: _Views = {}
        differs = False
        for name, follow_final in path_inputs:
            value = inputs.get(name)
            if not isinstance(value, str):
                continue
            lexical = _agent_path(value)
            # /workspace itself has no component that could be a link: no need to look on disk.
            real = lexical if lexical == WORKSPACE else self._resolved(value, name, follow_final) or lexical
            differs = differs or real != lexical
            _set_path_views(given, name, lexical)
            _set_path_views(resolved, name, real)
        return given, resolved if differs else None

    def _resolved(self, value: str, name: str, follow_final: bool) -> str | None:
        """The agent path ``value`` leads to through its symlinks now, or None if it cannot be resolved.

        None also for a path that leads outside the workspace: its capability refuses it the same way
        (path_outside_workspace), so the path as given is all there is to judge. Links changed between
        this decision and the capability's own resolution are not seen (see docs/gateway.md, *Paths*).
        """
        if self.workspace is None:
            return None  # a policy parsed without one (tests, benchmarks): normalised only
        try:
            real = self.workspace.resolve(value, follow_final=follow_final, input_name=name).real
        except (GatewayError, OSError, ValueError):
            return None
        return self.workspace.to_agent(real) if self.workspace.contains(real) else None


def _set_path_views(views: _Views, name: str, path: str) -> None:
    """Seed ``views`` so that every matcher on input ``name`` sees ``path``, not the text given."""
    views[(name, "text")] = path
    views[(name, "path")] = path.rstrip("/") + "/"


def _merge(rules: list[Rule]) -> list[_Candidate]:
    """Candidates in order; consecutive rules that differ only in one input's patterns become one.

    E.g. ten deny rules each with ``under`` on ``path``: one ``startswith`` over all their prefixes
    instead of ten tests; only when it matches are the members tried, to name the deciding rule.
    """

    def mergeable(rule: Rule) -> tuple[str, str, str] | None:
        if rule.unless is not None or len(rule.when.inputs) != 1:
            return None
        only = rule.when.inputs[0]
        return (rule.decision, only.name, only.kind)

    out: list[_Candidate] = []
    i = 0
    while i < len(rules):
        key = mergeable(rules[i])
        j = i + 1
        while key is not None and j < len(rules) and mergeable(rules[j]) == key:
            j += 1
        group = rules[i:j]
        if len(group) == 1:
            rule = group[0]
            out.append((rule.when.inputs, rule.unless, rule.verdict, None))
        else:
            assert key is not None
            patterns = [p for rule in group for p in rule.when.inputs[0].patterns]
            combined = _input_test(key[1], key[2], patterns)
            members = tuple((rule.when.inputs[0].test, rule.verdict) for rule in group)
            out.append(((combined,), None, group[0].verdict, members))
        i = j
    return out


def shipped_default_text() -> str:
    """The text of the policy that ships with the gateway (``kruxos_gateway/default-policy.yaml``)."""
    return resources.files("kruxos_gateway").joinpath(DEFAULT_POLICY_RESOURCE).read_text(encoding="utf-8")


def configured_policy(config: PolicyConfig, *, workspace: Workspace | None = None) -> Policy:
    """The policy a gateway starts with: the file ``config.file``; raise ``PolicyError`` if unusable.

    Only a configuration that names no policy file at all gets the shipped default when there is no
    file at the default path. A file the configuration names must exist: falling back to the shipped
    default would silently drop the operator's own rules (the appliance's gateway.yaml names it).
    """
    path = Path(config.file)
    if "file" not in config.model_fields_set and not path.exists():
        log.warning("no policy file at %s and none configured: using the shipped default policy", path)
        return parse_policy(shipped_default_text(), f"{path} (missing: shipped default)", workspace=workspace)
    return load_policy(path, workspace=workspace)


def load_policy(path: Path, *, workspace: Workspace | None = None) -> Policy:
    """Read and compile the policy file at ``path``; raise ``PolicyError`` (file, line, reason)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(
            str(path), None, "no such file", "restore it, or set policy.file to the policy to use"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(str(path), None, f"cannot read: {exc}") from None
    return parse_policy(text, str(path), workspace=workspace)


def parse_policy(text: str, source: str = "<policy>", *, workspace: Workspace | None = None) -> Policy:
    """Parse and compile policy YAML; raise ``PolicyError`` naming the line and what is wrong.

    With ``workspace``, path inputs are also matched as their symlinks resolve (module docstring).
    """
    try:
        raw = yaml.load(text, Loader=_Loader)
    except _Bad as exc:
        raise PolicyError(source, exc.line, exc.reason) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise PolicyError(
            source, mark.line + 1 if mark is not None else None, f"not valid YAML: {problem}"
        ) from None
    try:
        return _compile(raw, source, text, workspace)
    except _Bad as exc:
        raise PolicyError(source, exc.line, exc.reason) from None


def _compile(raw: object, source: str, text: str, workspace: Workspace | None) -> Policy:
    if not isinstance(raw, _Map):
        raise _Bad(1, "the policy must be a mapping with 'version', 'default' and 'rules'")
    unknown = set(raw) - {"version", "default", "groups", "rules"}
    if unknown:
        key = sorted(unknown)[0]
        raise _Bad(_line_of(raw, key), f"unknown key {key!r} (expected version, default, groups, rules)")
    if raw.get("version", 1) != 1:
        raise _Bad(_line_of(raw, "version"), f"version must be 1, got {raw.get('version')!r}")
    if "default" not in raw:
        raise _Bad(raw.line, "missing 'default': the decision for invocations no rule matches")
    default = _decision(raw["default"], _line_of(raw, "default"), "default")
    groups = _groups(raw.get("groups"), _line_of(raw, "groups"))
    rules_raw = raw.get("rules", _Seq())
    if not isinstance(rules_raw, list):
        raise _Bad(_line_of(raw, "rules"), "rules must be a list of rules")
    rules: list[Rule] = []
    names: dict[str, int] = {}
    for index, item in enumerate(rules_raw):
        line = _line_of(rules_raw, index) or 0
        rule = _rule(item, index, line, groups)
        if rule.name in names:
            raise _Bad(
                line, f"rules[{index}]: duplicate rule name {rule.name!r} (first at line {names[rule.name]})"
            )
        names[rule.name] = line
        rules.append(rule)
    return Policy(source, default, tuple(rules), groups, text, workspace)


def _decision(value: object, line: int | None, where: str) -> DecisionName:
    for decision in DECISIONS:
        if value == decision:
            return decision
    raise _Bad(line, f"{where} must be allow, deny or require_approval, got {value!r}")


def _strings(value: object, line: int | None, where: str, *, allow_empty: bool = False) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not allow_empty and not items:
        raise _Bad(line, f"{where} must not be an empty list")
    for item in items:
        if not isinstance(item, str) or not item:
            raise _Bad(line, f"{where} must be a string or a list of strings, got {item!r}")
    return [str(item) for item in items]


def _groups(value: object, line: int | None) -> dict[str, tuple[str, ...]]:
    if value is None:
        return {}
    if not isinstance(value, _Map):
        raise _Bad(line, "groups must map each group name to a list of key names (globs)")
    return {
        name: tuple(_strings(members, _line_of(value, name), f"groups.{name}", allow_empty=True))
        for name, members in value.items()
    }


def _rule(item: object, index: int, line: int, groups: Mapping[str, tuple[str, ...]]) -> Rule:
    where = f"rules[{index}]"
    if not isinstance(item, _Map):
        raise _Bad(line, f"{where} must be a mapping with at least 'name' and 'decision'")
    unknown = set(item) - _RULE_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise _Bad(
            _line_of(item, key),
            f"{where}: unknown key {key!r} (expected one of {', '.join(sorted(_RULE_KEYS))})",
        )
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _Bad(_line_of(item, "name", line), f"{where}: every rule needs a 'name' (a non-empty string)")
    where = f"rule {name!r}"
    if "decision" not in item:
        raise _Bad(line, f"{where}: missing 'decision' (allow, deny or require_approval)")
    decision = _decision(item["decision"], _line_of(item, "decision"), f"{where}: decision")
    why = item.get("why", "")
    if not isinstance(why, str):
        raise _Bad(_line_of(item, "why"), f"{where}: why must be a string")
    when = _conditions(item, where, groups)
    unless = None
    if "unless" in item:
        block = item["unless"]
        if not isinstance(block, _Map) or not block:
            raise _Bad(_line_of(item, "unless"), f"{where}: unless must be a mapping of conditions")
        extra = set(block) - _CONDITION_KEYS
        if extra:
            key = sorted(extra)[0]
            raise _Bad(_line_of(block, key), f"{where}: unless: unknown condition {key!r}")
        unless = _conditions(block, f"{where}: unless", groups)
    return Rule(name, decision, why.strip(), line, index, when, unless)


def _conditions(block: _Map, where: str, groups: Mapping[str, tuple[str, ...]]) -> _Conditions:
    def strings(key: str) -> list[str] | None:
        return _strings(block[key], _line_of(block, key), f"{where}: {key}") if key in block else None

    capabilities = strings("capability") or []
    categories, tiers, tags = strings("category"), strings("tier"), strings("tags")
    keys = strings("keys")
    group_names = strings("groups")
    key_patterns: list[str] | None = None
    if keys is not None or group_names is not None:
        key_patterns = list(keys or [])
        for group in group_names or []:
            if group not in groups:
                known = ", ".join(sorted(groups)) or "none are defined"
                raise _Bad(_line_of(block, "groups"), f"{where}: unknown group {group!r} ({known})")
            key_patterns.extend(groups[group])
    inputs: list[InputTest] = []
    if "inputs" in block:
        spec = block["inputs"]
        if not isinstance(spec, _Map) or not spec:
            raise _Bad(_line_of(block, "inputs"), f"{where}: inputs must map input names to matchers")
        for input_name, matcher in spec.items():
            inputs.append(
                _matcher(input_name, matcher, _line_of(spec, input_name), f"{where}: inputs.{input_name}")
            )
    return _Conditions(
        capabilities=tuple(_glob(p) for p in capabilities),
        categories=frozenset(categories) if categories is not None else None,
        tiers=frozenset(tiers) if tiers is not None else None,
        tags=frozenset(tags) if tags is not None else None,
        keys=tuple(_glob(p) for p in key_patterns) if key_patterns is not None else None,
        inputs=tuple(inputs),
    )


def _matcher(name: str, value: object, line: int | None, where: str) -> InputTest:
    if isinstance(value, str | list):
        return _input_test(name, "glob", _strings(value, line, where))
    if not isinstance(value, _Map) or len(value) != 1:
        raise _Bad(line, f"{where}: a matcher is a glob string or one of {{glob|regex|host|under: …}}")
    ((kind, patterns),) = value.items()
    if kind not in _MATCHER_KINDS:
        raise _Bad(_line_of(value, kind), f"{where}: unknown matcher {kind!r} (glob, regex, host or under)")
    texts = _strings(patterns, _line_of(value, kind), f"{where}.{kind}")
    if kind == "regex":
        for pattern in texts:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise _Bad(_line_of(value, kind), f"{where}: invalid regex {pattern!r}: {exc}") from None
    if kind == "under":
        for pattern in texts:
            if not pattern.startswith("/"):
                raise _Bad(_line_of(value, kind), f"{where}: under takes absolute paths, got {pattern!r}")
    return _input_test(name, kind, texts)
