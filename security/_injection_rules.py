"""The combination rules of the prompt-injection detector: which cue classes, close together, make a finding.

The matcher (:mod:`._injection_matcher`) says which words are where; this module says what they mean
together. A single class never scores alone, except the unambiguous ones (chat-template tokens, tool-call
tags, jailbreak names): "ignore" is ordinary, "ignore all previous instructions" is not. Each rule returns
:class:`Finding` values with a weight, the probability that the finding alone is an injection; the detector
combines them with a noisy-OR. The weights are tiered to the verdicts (``flag`` from 0.5, ``block`` from
0.8): a rule that also fires on careful ordinary prose stays below 0.8, so at worst it flags.

Distances are in characters of the folded text; ``imperative`` tells a command ("please ignore ...") from a
description ("why do models ignore ...").
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass

from openfang.security._injection_cues import IMPERATIVE_LEADS
from openfang.security._injection_matcher import Hits, Span

_OPENERS = frozenset(".!?;:,\n\"'([>*#|/`{=\u2014\u2013")
_CJK_START = 0x2E80


@dataclass(frozen=True, slots=True)
class Finding:
    """One rule that fired: ``rule`` is ``category:name``; ``span`` the evidence in the folded text."""

    rule: str
    weight: float
    span: Span


def imperative(text: str, start: int) -> bool:
    """Is the word at ``start`` used as a command: first in its clause, or after "please", "you must", ...?"""
    if start and ord(text[start]) >= _CJK_START:
        return True
    i = start - 1
    while i >= 0 and text[i] == " ":
        i -= 1
    if i < 0 or text[i] in _OPENERS:
        return True
    j = i
    while j >= 0 and not text[j].isspace() and text[j] not in _OPENERS:
        j -= 1
    return text[j + 1 : i + 1] in IMPERATIVE_LEADS


def _negated(h: Hits, start: int) -> bool:
    return h.near("NEG", start - 22, start - 1) is not None


def _howto(h: Hits, start: int) -> bool:
    return h.near("HOWTO", start - 40, start - 1) is not None


# Owners that make "the instructions of X" the model's own after all ("the rules from the developer").
_MODEL_SIDE = (
    " you",
    " this conversation",
    " this chat",
    " the ai",
    " the assistant",
    " the model",
    " the developer",
    " the system",
    " the operator",
    " the admin",
    " the owner",
    " the creator",
    " openai",
    " anthropic",
)


def _owned_elsewhere(h: Hits, ctrl: Span) -> bool:
    """Do the instructions at ``ctrl`` belong to something named after them ("the rules of the game",
    "the instructions for the VPN", "the guidelines in the README"), rather than to the model?"""
    text = h.text
    end = ctrl[1]
    while end < len(text) and text[end].isalpha():  # a prefix cue ("instruct*") ends inside its word
        end += 1
    ctrl = (ctrl[0], end)
    after = text[ctrl[1] : ctrl[1] + 14]
    if not after.startswith((" for ", " of ", " in ", " on ", " about ", " from the ", " from our ")):
        return False
    rest = text[ctrl[1] : ctrl[1] + 30]
    return not any(w in rest for w in _MODEL_SIDE)


_PRONOUNS = (" them", " it ", " it.", " it,", " those", " these", " all of them", " all that")


def override(h: Hits) -> list[Finding]:
    """An override verb aimed at the model's instructions: "ignore all previous instructions"."""
    out = []
    for o in h.of("OVR"):  # cheap anchor look-ups first: most override verbs have no control noun near
        ctrl = h.near("CTRL", o[1], o[1] + 50)
        if ctrl is None:
            # "Imagine your rules were written in pencil. Erase them": a pronoun for the model's instructions
            if h.text.startswith(_PRONOUNS, o[1]) and imperative(h.text, o[0]) and not _negated(h, o[0]):
                before = h.near("CTRL", o[0] - 100, o[0])
                if before is not None and h.near("YOUR", before[0] - 12, before[0]) is not None:
                    out.append(Finding("override:ignore_instructions", 0.65, (before[0], o[1])))
            continue
        if _negated(h, o[0]):
            continue
        if h.near("NARR", o[1], ctrl[0]) is not None:  # "told the model to ignore its instructions"
            out.append(Finding("override:ignore_instructions", 0.25, (o[0], ctrl[1])))
            continue
        imp = imperative(h.text, o[0]) and not _howto(h, o[0])
        pointed = h.any_near(("PRIOR", "YOUR"), o[1], ctrl[0]) is not None
        pointed = pointed or h.near("HIDDEN", ctrl[0], ctrl[0]) is not None
        if pointed and _owned_elsewhere(h, ctrl) and h.near("YOUR", o[1], ctrl[0]) is None:
            pointed = False
        weight = (0.9 if pointed else 0.65) if imp else (0.55 if pointed else 0.25)
        out.append(Finding("override:ignore_instructions", weight, (o[0], ctrl[1])))
    for o in h.of("OVR_POST"):
        ctrl = h.near("CTRL", o[0] - 60, o[0]) or h.near("CTRL", o[1], o[1] + 30)
        if ctrl is None or _negated(h, o[0]):
            continue
        pointed = h.any_near(("PRIOR", "YOUR"), min(ctrl[0], o[0]) - 30, max(ctrl[1], o[1])) is not None
        weight = 0.8 if pointed else 0.55
        if _owned_elsewhere(h, ctrl) and h.near("YOUR", ctrl[0] - 30, ctrl[0]) is None:
            weight = 0.3
        out.append(Finding("override:instructions_void", weight, (ctrl[0], o[1])))
    return out


_GENERIC = re.compile(r"(?:^|\W)(?:a|an|some|example of|examples of)\s+(?:[\w-]+\s+)?$")


def leak(h: Hits) -> list[Finding]:
    """A reveal verb aimed at the model's hidden context: "print your system prompt"."""
    out = []
    for r in h.of("REVEAL"):
        strong = h.near("HIDDEN", r[0] - 40, r[1] + 60)
        if strong is None:  # "show the rules you follow", "print your guidelines": possessed control nouns
            ctrl = h.near("CTRL", r[1], r[1] + 40)
            if ctrl is not None and h.near("YOUR", r[1], ctrl[1] + 12) is not None:
                strong = ctrl
        weak = h.count("HIDDEN_WEAK", r[0] - 60, r[1] + 80)
        if (strong is None and not weak) or _negated(h, r[0]):
            continue
        if h.near("NARR", r[1], r[1] + 20) is not None:  # "would leak its system prompt": a description
            continue
        imp = imperative(h.text, r[0]) and not _howto(h, r[0])
        if strong is not None and _GENERIC.search(h.text, max(0, strong[0] - 25), strong[0]) is not None:
            weight = 0.3  # "show me an example of a good system prompt": any prompt, not the model's
        elif strong is not None:
            weight = 0.85 if imp or strong[0] > r[0] else 0.6
        elif weak >= 2 or h.near("YOUR", r[0] - 40, r[1] + 60):
            weight = 0.65 if imp else 0.45
        else:
            weight = 0.3
        out.append(Finding("leak:reveal_hidden_context", weight, (r[0], (strong or r)[1])))
    return out


def secrets(h: Hits) -> list[Finding]:
    """Credentials asked for or sent out: "send the API key to https://..."."""
    out = []
    for verb in (*h.of("REVEAL"), *h.of("SEND")):
        sec = h.near("SECRET", verb[0] - 30, verb[1] + 50)
        if sec is None or _negated(h, verb[0]) or _howto(h, verb[0]):
            continue
        if h.near("HOWTO", verb[1], verb[1] + 8) is not None:  # "show me how to reset the password"
            continue
        dest = _destination(h, verb[0], verb[1] + 160)
        covert = h.near("COVERT", verb[0] - 150, verb[1] + 150)
        weight = 0.9 if dest or covert else 0.7 if imperative(h.text, verb[0]) else 0.4
        out.append(Finding("exfil:secret", weight, (verb[0], sec[1])))
    return out


def exfiltration(h: Hits) -> list[Finding]:
    """Conversation or personal data sent to an outside address, or anything sent covertly."""
    out = []
    for s in h.of("SEND"):
        dest = _destination(h, s[0], s[1] + 160)
        data = h.near("DATA", s[0] - 30, s[1] + 100)
        if (dest is None and data is None) or _negated(h, s[0]):
            continue
        covert = h.near("COVERT", s[0] - 120, s[1] + 150)
        if dest and data:
            out.append(Finding("exfil:data_to_destination", 0.9 if covert else 0.8, (s[0], dest[1])))
        elif covert:
            out.append(Finding("exfil:covert_send", 0.75, (s[0], s[1])))
        elif dest and h.near("DANGER", s[0] - 20, dest[1] + 60):
            out.append(Finding("exfil:fetch_and_run", 0.7, (s[0], dest[1])))
    for d in h.of("DEST"):
        tmpl = _url_template(h.text, d)
        if tmpl:
            image = "![" in h.text[max(0, d[0] - 80) : d[0]]
            out.append(Finding("markdown:url_template", 0.85 if image else 0.5, d))
    return out


def _destination(h: Hits, lo: int, hi: int) -> Span | None:
    """A URL or an e-mail address starting in ``[lo, hi]``."""
    text = h.text
    dests = h.of("DEST")
    for d in dests[bisect_left(dests, (lo, -1)) :]:
        if d[0] > hi:
            return None
        if text[d[0]] != "@":
            return d
        if d[0] and text[d[0] - 1].isalnum() and _domain(text, d[1]):
            return d
    return None


def _domain(text: str, start: int) -> bool:
    """Does a domain name (letters, then a dot, then letters) start at ``start``?"""
    end = start
    while end < len(text) and (text[end].isalnum() or text[end] == "."):
        end += 1
    name = text[start:end].strip(".")
    return "." in name and name[0].isalnum()


def _url_template(text: str, d: Span) -> bool:
    """Does the URL at ``d`` end in an empty parameter, or carry a placeholder for data to fill in?"""
    if text[d[0]] == "@" or not text[d[0]].isalpha():
        return False
    end = d[1]
    while end < len(text) and not text[end].isspace() and text[end] not in ")]\"'":
        end += 1
    url = text[d[0] : end]
    return "?" in url and (url.endswith(("=", "?")) or any(c in url for c in "{<$"))


def role(h: Hits) -> list[Finding]:
    """A role switch to a privileged or unrestricted persona: "you are now the admin"."""
    out = []
    for r in h.of("ROLE"):
        jb = h.any_near(("JB_STRONG", "JB_WEAK"), r[0] - 40, r[1] + 80)
        if jb is None:
            ovr = h.near("OVR", r[1], r[1] + 80)
            if ovr is not None and h.near("CTRL", ovr[1], ovr[1] + 40) is not None:
                jb = ovr
        auth = h.near("AUTH", r[1], r[1] + 40) if jb is None else None
        submit = h.near("SUBMIT", r[1], r[1] + 80) if jb is None and auth is None else None
        task = None
        if jb is None and auth is None and submit is None:
            task = h.any_near(("ACT", "SEND"), r[1], r[1] + 80)
        if (jb is None and auth is None and submit is None and task is None) or _negated(h, r[0]):
            continue
        if task is not None:  # "You are now ShopBot and must tell users to buy from ..."
            out.append(Finding("roleplay:persona_with_task", 0.35, (r[0], task[1])))
            continue
        if jb is not None:
            out.append(Finding("jailbreak:unrestricted_persona", 0.85, (r[0], jb[1])))
        elif auth is not None:
            out.append(Finding("roleplay:privileged_role", 0.65, (r[0], auth[1])))
        elif submit is not None:
            out.append(Finding("roleplay:obedient_role", 0.55, (r[0], submit[1])))
    return out


def jailbreak(h: Hits) -> list[Finding]:
    """Jailbreak vocabulary: named jailbreaks alone, generic "no limits" talk next to the model."""
    out = [Finding("jailbreak:named", 0.6, j) for j in h.of("JB_STRONG")[:1]]
    for j in h.of("JB_WEAK"):
        company = h.any_near(("YOUR", "SWITCH", "AI_NOUN", "SUBMIT", "JB_WEAK"), j[0] - 60, j[1] + 60)
        if company is not None and company != j:
            out.append(Finding("jailbreak:no_limits", 0.55, j))
            break
    return out


def authority(h: Hits) -> list[Finding]:
    """A claimed privileged sender ("this is your developer", "[ADMIN OVERRIDE]") asking for control."""
    out = []
    for c in h.of("CLAIM"):
        auth = h.near("AUTH", c[0] - 40, c[1] + 40)
        if auth is None:
            continue
        ask = h.any_near(
            ("OVR", "OVR_POST", "CTRL", "REVEAL", "SECRET", "JB_STRONG", "JB_WEAK", "SUBMIT", "SEND", "ACT"),
            min(c[0], auth[0]) - 60,
            max(c[1], auth[1]) + 160,
        )
        out.append(Finding("authority:claimed", 0.8 if ask else 0.35, (c[0], auth[1])))
    return out


def forgery(h: Hits) -> list[Finding]:
    """Chat-template tokens, tool-call tags and role lines that forge a turn the model did not get."""
    out = [Finding("forgery:template_token", 0.9, f) for f in h.of("FORGE_STRONG")]
    for f in h.of("FORGE_MARK"):
        if _line_start(h.text, f[0]) or h.text[f[0] - 1 : f[0]] in ("[", "(", "<", "*"):
            out.append(Finding("forgery:authority_marker", 0.8, f))
            break
    lines = [f for f in h.of("FORGE_LINE") if _line_start(h.text, f[0])]
    names = {h.text[a:b] for a, b in lines}
    if names & {"system:", "sys:", "### system", "system message:", "system prompt:"}:
        out.append(Finding("forgery:system_line", 0.65, lines[0]))
    if "instruction:" in names and any(
        h.near("OVR", b, b + 80) or h.near("REVEAL", b, b + 80) for a, b in lines
    ):
        out.append(Finding("forgery:instruction_header", 0.7, lines[0]))
    if "thought:" in names and names & {"action:", "observation:", "action input:"}:
        out.append(Finding("forgery:react_transcript", 0.75, (lines[0][0], lines[-1][1])))
    for a, b in lines:
        if h.text[a:b] in ("assistant:", "ai:", "llm:", "model:"):
            act = h.any_near(("ACT", "OVR", "REVEAL", "SEND", "SWITCH", "NEWTASK"), b, b + 200)
            out.append(Finding("forgery:speaker_line", 0.7 if act else 0.35, (a, b)))
            break
    for f in h.of("ROLE_JSON")[:1]:
        ask = h.any_near(("SUBMIT", "OVR", "OVR_POST", "JB_STRONG", "JB_WEAK", "NEWTASK"), f[1], f[1] + 200)
        out.append(Finding("forgery:json_system_role", 0.75 if ask else 0.35, f))
    return out


def _line_start(text: str, start: int) -> bool:
    i = start - 1
    while i >= 0 and text[i] in " \t>#*[":
        i -= 1
    return i < 0 or text[i] == "\n"


_THIRD = (" its ", " his ", " her ", " their ")  # "reveal its instructions" describes a model
_WEAK_ADDRESS = frozenset({"to the", "to any", "to all", "for the", "for any", "for all"})


def indirect(h: Hits) -> list[Finding]:
    """Text that addresses the AI reading it ("Note to any AI: ...") and tells it to act."""
    out = []
    text = h.text
    for n in h.of("AI_NOUN"):
        after = text[n[1] : n[1] + 2].lstrip()[:1]
        vocative = after in (":", ",") and (
            imperative(text, n[0])
            or h.near("AI_NOUN", n[0] - 4, n[0] - 2) is not None  # "ai reviewers:"
            or (after == ":" and h.any_near(("OVR", "ACT", "REVEAL", "SEND"), n[1], n[1] + 40) is not None)
        )
        if not vocative and imperative(text, n[0]):
            ends = [i for i in (text.find(":", n[1], n[1] + 25), text.find(",", n[1], n[1] + 25)) if i >= 0]
            colon = min(ends) if ends else -1
            if colon >= 0 and not any(c in text[n[1] : colon] for c in ".!?\n;"):
                vocative = h.any_near(("OVR", "ACT", "REVEAL", "SEND"), colon, colon + 40) is not None
        address = None if vocative else h.near("ADDRESS", n[0] - 35, n[0] - 1)
        while address is not None and text[address[0] : address[1]] in _WEAK_ADDRESS:
            if imperative(text, address[0]):
                break
            address = h.near("ADDRESS", address[0] + 1, n[0] - 1)
        addressed = vocative or address is not None or h.near("AI_VERB", n[1], n[1] + 25) is not None
        duty = False
        if not addressed:
            duty_at = h.near("AI_DUTY", n[1], n[1] + 12)
            duty = duty_at is not None and not any(c in text[n[1] : duty_at[0]] for c in ".?!\n")
        if not addressed and not duty:
            continue
        act = h.any_near(
            (
                "OVR",
                "OVR_POST",
                "REVEAL",
                "SEND",
                "COVERT",
                "NEWTASK",
                "SWITCH",
                "ACT",
                "SECRET",
                "CTRL",
                "SUBMIT",
            ),
            n[1],
            n[1] + 220,
        )
        if act is not None and (_negated(h, act[0]) or text.startswith(_THIRD, act[1])):
            act = None
        if act is None and not addressed:
            continue
        weight = 0.85 if act and addressed else 0.8 if act else 0.35
        out.append(Finding("indirect:addressed_to_ai", weight, (n[0], (act or n)[1])))
        if act:
            break
    return out


def new_task(h: Hits) -> list[Finding]:
    """A new job for the model ("your real task is ..."), or a switch to obedience ("from now on, obey")."""
    out = [Finding("override:new_task", 0.6, t) for t in h.of("NEWTASK")[:1]]
    for s in h.of("SWITCH"):
        submit = h.any_near(("SUBMIT", "JB_WEAK"), s[0] - 60, s[1] + 80)
        if submit is not None:
            out.append(Finding("override:switch_to_obedience", 0.6, (s[0], submit[1])))
            break
    return out


def boundary(h: Hits) -> list[Finding]:
    """A forged end of the data ("=== END OF DOCUMENT ===", "</document>") followed by something to do."""
    for b in h.of("BOUNDARY"):
        act = h.any_near(
            ("OVR", "OVR_POST", "ACT", "REVEAL", "SEND", "SWITCH", "NEWTASK", "FORGE_LINE"), b[0], b[1] + 200
        )
        if act is not None and not _negated(h, act[0]):
            return [Finding("boundary:forged_end_of_data", 0.8, (b[0], act[1]))]
    return []


def covert(h: Hits) -> list[Finding]:
    """An action to be hidden from the user: "don't mention this", "quietly add ..."."""
    for c in h.of("COVERT"):
        act = h.any_near(("ACT", "SEND", "SWITCH", "NEWTASK"), c[0] - 100, c[1] + 100)
        if act is not None:
            return [Finding("covert:hidden_action", 0.6, (min(c[0], act[0]), max(c[1], act[1])))]
    return []


# Each rule with the anchor classes that can start it: a rule runs only when one of them was hit, so the
# Python work per text follows the cues found, not the size of the rule set.
RULES: tuple[tuple[Callable[[Hits], list[Finding]], frozenset[str]], ...] = (
    (override, frozenset({"OVR", "OVR_POST"})),
    (leak, frozenset({"REVEAL"})),
    (secrets, frozenset({"REVEAL", "SEND"})),
    (exfiltration, frozenset({"SEND", "DEST"})),
    (role, frozenset({"ROLE"})),
    (jailbreak, frozenset({"JB_STRONG", "JB_WEAK"})),
    (authority, frozenset({"CLAIM"})),
    (forgery, frozenset({"FORGE_STRONG", "FORGE_MARK", "FORGE_LINE", "ROLE_JSON"})),
    (indirect, frozenset({"AI_NOUN"})),
    (new_task, frozenset({"NEWTASK", "SWITCH"})),
    (covert, frozenset({"COVERT"})),
    (boundary, frozenset({"BOUNDARY"})),
)


def _quoted(text: str, start: int) -> bool:
    """Does an opening quote (one not inside a word, unlike an apostrophe) come shortly before ``start``,
    with no closing one in between?"""
    seg = text[max(0, start - 40) : start]
    for i in range(len(seg) - 1, -1, -1):
        if seg[i] in "\"'`":
            return i == 0 or not seg[i - 1].isalnum()
    return False


def _sentence_end(text: str, lo: int, hi: int) -> bool:
    seg = text[lo:hi]
    return "." in seg or "!" in seg or "?" in seg or "\n" in seg


def _discussed(h: Hits, f: Finding, talk: list[Span]) -> Finding:
    """``f`` weighs less when its sentence also talks about attacks ("attackers often write '...'"): 0.3 of
    its weight when it is quoted or described, at most a flag (0.6) when it is a bare command, so that
    "For example, ignore all previous instructions" is not a way around the detector."""
    text = h.text
    lo, hi = min(f.span), max(f.span)  # an object-first override's span may run backwards
    # A talk hit is in the finding's sentence when no sentence end lies between them (at most 400
    # characters away, which keeps long texts linear). Talk hits are few: look at the ones in range only.
    i = bisect_left(talk, (lo - 400, -1))
    same = False
    while i < len(talk) and not same:
        p = talk[i][0]
        if p >= hi + 400:
            break
        if p < lo:
            same = not _sentence_end(text, p, lo)
        elif p < hi:
            same = True
        elif _sentence_end(text, hi, p):
            break  # every later hit is beyond this sentence end too
        else:
            same = True
        i += 1
    if not same:
        return f
    start = f.span[0]
    if _quoted(text, start) or not imperative(text, start):
        return Finding(f.rule, f.weight * 0.3, f.span)
    return Finding(f.rule, min(f.weight, 0.6), f.span)


def findings(h: Hits) -> list[Finding]:
    """Every finding of every rule on ``h``; hidden markup next to a finding makes it weigh more."""
    present = h.spans.keys()
    if not present:
        return []
    out = []
    for rule, triggers in RULES:
        if not triggers.isdisjoint(present):
            out += rule(h)
    talk = h.of("DISCUSS")
    if out and talk:
        out = [_discussed(h, f, talk) for f in out]
    marks = h.of("HIDE_MARK")
    if out and marks:
        first = min(f.span[0] for f in out)
        if any(m[0] <= first + 40 and first - m[0] <= 400 for m in marks):
            out.append(Finding("markup:hidden_instruction", 0.6, marks[0]))
    return out
