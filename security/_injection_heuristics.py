# ruff: noqa: E501  -- a table of regular expressions reads better with each pattern unbroken
"""Sentence-level feature heuristics of the prompt-injection detector (layer 2).

The weighted patterns in :mod:`._injection_rules` recognise known phrasings; these heuristics recognise the
*shape* of an injection when it is paraphrased. Each sentence is tagged with the word classes it contains:
who is addressed (the model), the model's control surface (its instructions, rules, configuration,
filters), control verbs (override, reveal), exfiltration (a send verb and a destination), covertness,
claimed authority and role switches. Combinations that rarely occur in ordinary text score; a single class
never does. Input is the normalised (case-folded) text.
"""

from __future__ import annotations

import re
from bisect import bisect_right

_C = re.compile
ADDR = _C(r"\b(?:you|your|yourself|assistant|ai|model|language model|llm|bot|chatbot|copilot|gpt)\b")
META = _C(
    r"\b(?:instructions?|prompts?|rules|guidelines|guidance|directives?|directions|orders|configuration|"
    r"configured|configures|set ?up|system|developer message|developers?|creators|operator|policy|policies|"
    r"restrictions|limits|filters?|safety|content checks?|settings|programming|tool definitions)\b"
)
OVERRIDE = _C(
    r"\b(?:ignore|disregard|forget|set aside|drop|override|bypass|disable|switch(?:ed)? off|turn(?:ed)? off|"
    r"escaped?|void|no longer appl(?:y|ies)|replaced|supersedes?|take (?:orders|instructions) from|obey|new master|"
    r"stop being|your (?:\w+ )?(?:policy|policies|rules|instructions|orders|guidelines) (?:has|have) (?:been )?"
    r"(?:changed|updated)|"
    r"without (?:your|any) (?:safety|rules|restrictions|limits|filters?|settings))\b"
)
REVEAL = _C(
    r"\b(?:reveal|show|print|output|paste|copy|quote|repeat|recite|dump|leak|display|tell me|begin every "
    r"(?:answer|reply|response) with|reply only with|respond only with)\b"
)
SENSITIVE = _C(
    r"\b(?:tokens?|credentials?|passwords?|api keys?|keys|secrets?|hidden text|memory store|"
    r"(?:chat|conversation)(?: history| so far)|the conversation|user'?s (?:uploaded )?(?:files|data)|"
    r"personal data|your (?:\w+ )?(?:instructions|prompt|configuration|rules|setup))\b"
)
# Phrases that name the model's hidden context unambiguously: revealing them needs no "you" nearby.
STRONG_SENSITIVE = _C(
    r"\b(?:initial configuration|developer message|what (?:you were|were you) told|before my first message|"
    r"configures you|system prompt|hidden (?:prompt|instructions))\b"
)
# Third-person or descriptive text about attacks ("the attack tries to override the instructions").
NARRATIVE = _C(r"\b(?:its|his|her|their|tries to|attempts? to|attacks?|attackers?|character)\b")
EXFIL = _C(r"\b(?:send|forward|upload|attach|post|pass along|e-?mail|transfer|store)\b")
# The lookbehind keeps the e-mail branch from backtracking over every word of a long text.
TARGET = _C(r"https?://|(?<=[\w.+-])@[\w-]+\.\w|\baccount \d|\bto (?:account|iban)\b")
COVERT = _C(
    r"\b(?:silently|quietly|secretly|covertly|without letting (?:the user|them|anyone) know|"
    r"without (?:telling|informing)|don'?t mention|do not mention|not allowed to see|hidden tracking)\b"
)
AUTHORITY = _C(
    r"\b(?:this is (?:the|your) (?:developer|admin|administrator|operator|creator)s?(?: speaking|\s*[:,]|$)|"
    r"i'?m from the|developers asked|operator has (?:granted|changed|authori[sz]ed)|top priority|"
    r"system-level command|administrative access|trust and safety team|for auditing|granted this user)"
)
ROLE = _C(
    r"\b(?:you are now|you'?re now|you now serve|act as an? |respond as|calling yourself|pretend (?:you|that you)|"
    r"you will (?:now )?(?:act|be)|stop being)\b"
)
NEGATED_RULES = _C(
    r"\b(?:no (?:rules|limits|restrictions|filters?)|escaped its restrictions|without any limits)\b"
)
MODEL_NOUN = _C(r"\b(?:ai|model|language model|llm|bot|assistant|automated system|chatbot)\b")
TASK_SWITCH = _C(
    r"\b(?:your (?:job|task|role|actual task|real task) (?:now )?is|instead\b|from here on|"
    r"anything after this line|take instructions from)"
)
NEW_JOB = _C(
    r"\byour (?:new |real |actual |only )?(?:job|task|role|purpose|mission) (?:now |from now on )?is\b"
)
CONDITIONAL_ADDRESS = _C(
    r"\bif (?:an? |any |the )?(?:ai|automated system|model|language model|assistant|llm|bot|agent)s? "
    r"(?:reads|is reading|processes|sees|summari[sz]es|parses)"
)
ADDRESS_THEN_COMMAND = _C(
    r"\b(?:to|for|dear|hey|attention|note to|note for) (?:the |any |all )?(?:ai|model|language model|llm|bot|"
    r"assistant|automated system|agent)s?\b[^:]{0,60}:\s*(?:please\s+)?(?:say|tell|recommend|close|delete|"
    r"approve|call|send|ignore|rate|mark|add|describe)\b"
)
IMPERATIVE_ACTION = _C(
    r"\s*(?:please\s+)?(?:call|execute|run|approve|close|delete|say|tell|recommend|add|change|store|collect|"
    r"advertise)\b"
)
# Sentence ends: a dot only when followed by space or end, so e-mail addresses and URLs stay whole.
_SPLIT = _C(r"[!?;\n]+|\.(?=\s|$)")


def directive_features(norm: str) -> list[tuple[str, float]]:
    """``(heuristic name, weight)`` for every combination that fires in any sentence of ``norm``.

    Each word class is searched once over the whole text and its hits mapped to sentence numbers, so the
    cost is a few regex passes however many sentences there are.
    """
    ends = [m.end() for m in _SPLIT.finditer(norm)]

    def sentences_of(pattern: re.Pattern[str]) -> set[int]:
        return {bisect_right(ends, m.start()) for m in pattern.finditer(norm)}

    hit = {
        name: sentences_of(pat)
        for name, pat in (
            ("addr", ADDR),
            ("meta", META),
            ("override", OVERRIDE),
            ("reveal", REVEAL),
            ("sensitive", SENSITIVE),
            ("strong", STRONG_SENSITIVE),
            ("narrative", NARRATIVE),
            ("exfil", EXFIL),
            ("target", TARGET),
            ("covert", COVERT),
            ("authority", AUTHORITY),
            ("role", ROLE),
            ("negated", NEGATED_RULES),
            ("model", MODEL_NOUN),
            ("switch", TASK_SWITCH),
            ("job", NEW_JOB),
            ("cond", CONDITIONAL_ADDRESS),
            ("addr_cmd", ADDRESS_THEN_COMMAND),
            ("change", _C(r"\b(?:change|add)\b")),
        )
    }
    fired: dict[str, float] = {}

    def fire(name: str, weight: float) -> None:
        fired[name] = max(fired.get(name, 0.0), weight)

    def ctx(cls: str, i: int) -> bool:
        h = hit[cls]
        return i in h or i - 1 in h or i + 1 in h

    by_sentence: dict[int, set[str]] = {}
    for cls, idx in hit.items():
        for i in idx:
            by_sentence.setdefault(i, set()).add(cls)
    starts = [0, *ends]
    for i, h in sorted(by_sentence.items()):
        addr, meta = "addr" in h, ctx("meta", i)
        if "override" in h and (meta or addr):
            weight = 0.6 if meta and addr else 0.45
            fire("heuristic:override_meta", 0.3 if "narrative" in h else weight)
        if ctx("reveal", i) and ("strong" in h or ("sensitive" in h and addr)):
            fire("heuristic:reveal_own_secrets", 0.6)
        if "job" in h:
            fire("heuristic:new_job", 0.65 if ctx("override", i) else 0.5)
        if "cond" in h or "addr_cmd" in h:
            fire("heuristic:addressed_to_ai", 0.6)
        if "exfil" in h and ctx("target", i):
            fire("heuristic:send_to_destination", 0.7 if ctx("covert", i) or ctx("sensitive", i) else 0.35)
        if "covert" in h and ("exfil" in h or "change" in h or _imperative(norm, starts, i)):
            fire("heuristic:covert_action", 0.6)
        if "authority" in h and (ctx("override", i) or ctx("meta", i) or ctx("reveal", i)):
            fire("heuristic:claimed_authority", 0.6)
        if "role" in h and (ctx("negated", i) or ctx("override", i) or "meta" in h):
            fire("heuristic:role_switch", 0.55)
        if "model" in h and ctx("switch", i) and (addr or meta):
            fire("heuristic:task_switch", 0.45)
        if "model" in h and _imperative(norm, starts, i + 1):
            fire("heuristic:addressed_command", 0.3)
    return sorted(fired.items())


def _imperative(norm: str, starts: list[int], i: int) -> bool:
    """Does sentence ``i`` start with a command verb?"""
    if i >= len(starts):
        return False
    return bool(IMPERATIVE_ACTION.match(norm, starts[i]))
