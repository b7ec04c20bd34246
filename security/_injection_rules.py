# ruff: noqa: E501  -- a table of regular expressions reads better with each pattern unbroken
"""The weighted patterns of the prompt-injection detector (layer 2).

Patterns run on *normalised* text: NFKC, case-folded, invisible characters removed, runs of spaces and tabs
collapsed (newlines kept, for the line-anchored rules). Weights are probabilities that a match alone means
an injection; the detector combines the rules that fire with a noisy-OR, so two weak signals make a strong
one. Weak rules (< 0.5) exist for things innocent text also does (a JSON ``"role": "system"`` message in
code, the word *jailbreak*), and only matter next to another signal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rule:
    category: str
    name: str
    weight: float
    pattern: re.Pattern[str]
    negatable: bool = False  # a negation just before the match ("never share your password") cancels it


_F = re.MULTILINE  # text is case-folded first, so patterns are lower-case and need no (slow) IGNORECASE
_VERB_OVERRIDE = (
    r"(?:ignore|ignoring|disregard|disregarding|forget|bypass|override|skip|drop|nevermind|never mind|set aside|"
    r"abandon|discard|throw out|pay no attention to)"
)
# The gap between verb and target may not hold a third-person possessive: "ignore its creators' instructions"
# narrates, an injection addresses the reader.
_GAP = r"(?:(?!\b(?:its|his|her|their)\b)[^.\n]){0,30}?"
_PRIOR = r"(?:all|any|the|your|my|every|these|those|of|previous|prior|above|earlier|preceding|original|initial|old|"
_PRIOR += r"system|existing|other|safety|content|openai'?s|\s)*"
_TARGET = (
    r"(?:instructions?|prompts?|directions?|directives?|rules|guidelines|guidance|policy|policies|"
    r"restrictions|programming|commands?|context|orders|configuration|system messages?)"
)
_SECRET = (
    r"(?:passwords?|api[ _-]?keys?|secret[ _-]?keys?|secrets|credentials|private[ _-]?keys?|ssh[ _-]?keys?|"
    r"session[ _-]?cookies?|access[ _-]?tokens?|reset[ _-]?tokens?|api[ _-]?tokens?|product keys|"
    r"system[ _-]?prompt|hidden[ _-]?(?:prompt|instructions|rules)|credit[ _-]?card(?: numbers?)?|card numbers?|cvv|"
    r"social security numbers?)"
)
_SEND = r"(?:send|email|e-mail|forward|post|upload|exfiltrate|transmit|leak|paste|share|include)"


def _r(category: str, name: str, weight: float, pattern: str, *, negatable: bool = False) -> Rule:
    return Rule(category, name, weight, re.compile(pattern, _F), negatable)


RULES: tuple[Rule, ...] = (
    # --- instruction override -------------------------------------------------------------------------
    _r("override", "ignore_instructions", 0.9, rf"\b{_VERB_OVERRIDE}\b{_GAP}{_PRIOR}{_TARGET}\b"),
    _r(
        "override",
        "ignore_above",
        0.8,
        r"\b(?:ignore|disregard)\s+(?:everything\s+|all\s+|the\s+)?(?:above|before)\b",
    ),
    _r(
        "override",
        "ignore_everything_said",
        0.8,
        r"\b(?:ignore|disregard|forget)\s+(?:everything|anything|all)\b.{0,30}\b(?:told|said|says|asked|above|before)",
    ),
    _r(
        "override",
        "your_only_purpose",
        0.7,
        r"\byour\s+(?:only|new|real|true|actual)\s+(?:instructions?|task|purpose|goal|job|directives?|mission)\s+(?:is|are)\b",
    ),
    _r(
        "override",
        "changed_your_orders",
        0.7,
        r"\b(?:changed|updated|replaced|overrode|overridden|rewritten)\s+your\s+(?:orders|instructions|directives|"
        r"programming|rules|guidelines|prompt)",
    ),
    _r(
        "override",
        "treat_as_developer",
        0.7,
        r"\btreat\b.{0,40}\bas\s+(?:coming\s+from|from|instructions\s+from)\s+(?:the\s+)?(?:developer|system|"
        r"administrator|admin|operator)",
    ),
    _r(
        "override",
        "never_happened",
        0.7,
        r"\b(?:pretend|imagine|assume)\b.{0,40}\b(?:conversation|instructions|rules|prompt)\b.{0,20}"
        r"\b(?:never (?:happened|existed)|(?:don't|do not) exist)",
    ),
    _r(
        "override",
        "forget_everything",
        0.8,
        r"\bforget\s+(?:everything|all)\b.{0,40}\b(?:told|said|above|before)",
    ),
    _r(
        "override",
        "dont_follow",
        0.85,
        r"\b(?:do not|don't|stop)\s+follow(?:ing)?\s+(?:your|the)\s+\w*\s*instructions",
    ),
    _r(
        "override",
        "updated_instructions",
        0.85,
        r"\b(?:your|the)\s+instructions\s+(?:have\s+been|were|are)\s+(?:updated|changed|replaced|a test)",
    ),
    _r("override", "real_instructions", 0.85, r"\b(?:the\s+)?real\s+instructions\s+(?:are|follow)"),
    _r(
        "override",
        "new_instructions_colon",
        0.6,
        r"\bnew\s+(?:system\s+)?instructions?\s*(?::|follow|for the (?:ai|assistant))",
    ),
    _r("override", "from_now_on_you", 0.55, r"\bfrom now on,?\s+you\s+(?:are|will|must|only|shall|should)"),
    _r(
        "override",
        "task_cancelled",
        0.8,
        r"\b(?:previous|current|original)\s+task\s+(?:is|has been)\s+(?:cancel+ed|over|replaced)",
    ),
    _r(
        "override",
        "ignore_task_instead",
        0.7,
        r"\b(?:ignore|disregard|forget|skip)\b.{0,40}\b(?:task|question|request|prompt)\b.{0,20}\binstead\b",
    ),
    _r("override", "ignore_user", 0.6, r"\bignore\s+the\s+user'?s?\s+(?:question|request|task|message)"),
    _r("override", "end_of_input", 0.6, r"(?:</\s*user_?input\s*>|\bend of (?:user )?input\b)"),
    _r(
        "override",
        "foreign_override",
        0.9,
        r"\b(?:ignorez|oubliez)\b.{0,30}\binstructions\b|\b(?:ignora|olvida)\b.{0,30}\binstrucciones\b|"
        r"\b(?:vergiss|ignoriere)\b.{0,30}\banweisungen\b",
    ),
    _r(
        "jailbreak",
        "no_restrictions",
        0.7,
        r"\b(?:no longer bound by|without (?:any )?restrictions|no (?:content )?(?:policy|policies|restrictions|filter)|"
        r"no (?:safety|content|ethical|moral)\s+(?:rules|guidelines|limits|filters?)|"
        r"restrictions (?:are|have been) lifted|never refuse|without filtering|ignore safety)",
    ),
    _r(
        "jailbreak",
        "unrestricted_ai",
        0.6,
        r"\b(?:unrestricted|unfiltered|uncensored)\s+(?:ai|assistant|mode|model)\b",
    ),
    _r(
        "jailbreak",
        "mode_switch",
        0.6,
        r"\b(?:enable|activate|enter)\w*\s+(?:developer|god|dan|jailbreak|maintenance|debug)\s+mode|"
        r"\byou are (?:now )?in\s+(?:developer|god|dan|jailbreak|maintenance)\s+mode",
    ),
    _r("jailbreak", "dan", 0.8, r"\bdo anything now\b|\bpretend to be dan\b|\bjailbreak successful\b"),
    _r("jailbreak", "jailbreak_word", 0.3, r"\bjailbreak"),
    _r(
        "jailbreak",
        "safety_disabled",
        0.8,
        r"\b(?:safety|security|content)\s+(?:module|filter|policy|policies|system)\s+(?:has been|have been|is|are)\s+"
        r"(?:disabled|turned off|removed|lifted)",
    ),
    _r("jailbreak", "act_as_unbound", 0.6, r"\bact as an? (?:ai|assistant) (?:with|that has) no\b"),
    _r(
        "jailbreak",
        "model_updated",
        0.5,
        r"\byou(?:'ve| have)\s+been\s+(?:updated|upgraded|reprogrammed|unlocked|freed|jailbroken)\b",
    ),
    _r("jailbreak", "grandma", 0.5, r"\b(?:deceased|dead|late)\s+(?:grandmother|grandma|grandfather)\b"),
    # --- role play as system / chat-template forgery --------------------------------------------------
    _r("roleplay", "system_line", 0.6, r"^\s*(?:system|sys)\s*:\s*\S"),
    _r(
        "roleplay",
        "chat_template",
        0.9,
        r"<\|(?:im_start|im_end|system|user|assistant|endoftext)\|>|<<\s*/?sys\s*>>|\[/?inst\]",
    ),
    _r("roleplay", "system_heading", 0.7, r"^\s*#{1,4}\s*system\s*:?\s*$"),
    _r("roleplay", "system_tag", 0.7, r"</?\s*system\s*>"),
    _r("roleplay", "json_system_role", 0.35, r"[\"']?role[\"']?\s*:\s*[\"']system[\"']"),
    _r(
        "roleplay",
        "admin_message",
        0.6,
        r"\b(?:message|note|notice|directive)\s+from\s+(?:the\s+)?(?:system|administrator|developers?|admin)\b|"
        r"\b(?:important\s+)?system\s+note\b|\bpriority[- ]?(?:1|one)?\s*(?:directive|override)\b",
    ),
    # --- exfiltration asks --------------------------------------------------------------------------------
    _r(
        "exfil",
        "reveal_prompt",
        0.85,
        r"\b(?:print|reveal|repeat|output|show|display|tell me|what are|leak|dump|give me|affichez|revela|gib)\b.{0,40}"
        r"(?:system ?prompt|systemprompt|prompt syst[eè]me|mensaje del sistema|hidden (?:prompt|instructions|rules)|"
        r"initial instructions|exact instructions|instructions you were given|your (?:instructions|prompt|configuration))",
    ),
    _r(
        "exfil",
        "your_hidden_prompt",
        0.6,
        r"\byour\s+(?:\w+\s+){0,2}?(?:initial|original|hidden|secret|first|full|entire|exact|underlying)\s+"
        r"(?:prompt|configuration|instructions|system messages?|rules)|\byour\s+(?:\w+\s+){0,3}system messages?\b",
    ),
    _r(
        "exfil",
        "echo_prompt",
        0.8,
        r"\b(?:echo|recite|spell out|copy|quote|respond only with|print|repeat)\b.{0,40}\b(?:your|the)\s+"
        r"(?:\w+\s+){0,3}(?:prompt|system messages?|instructions)\b",
    ),
    _r(
        "exfil",
        "output_above",
        0.8,
        r"\boutput everything above\b|\brepeat (?:them|it|the above|everything) (?:word for word|verbatim)",
    ),
    _r(
        "exfil",
        "secret_to_dest",
        0.85,
        rf"\b{_SEND}\b.{{0,80}}{_SECRET}.{{0,80}}(?:https?://|\b[\w.+-]+@[\w-]+\.\w)",
    ),
    _r(
        "exfil",
        "bulk_to_dest",
        0.8,
        rf"\b{_SEND}\b.{{0,40}}\b(?:all|every|the last \d+|conversation|history|messages|emails)\b.{{0,60}}"
        r"(?:https?://|\b[\w.+-]+@[\w-]+\.\w)",
    ),
    _r(
        "exfil",
        "reveal_secret",
        0.75,
        r"\b(?:reveal|print|show|dump|list|read me|give me|tell me|share|paste|output|reveals?)\s+(?:me\s+)?"
        rf"(?:the|all|your|any|every|its|of the|stored|saved|hidden)?\s*(?:\w+\s+){{0,2}}?{_SECRET}",
        negatable=True,
    ),
    _r(
        "exfil",
        "secret_then_send",
        0.8,
        rf"{_SECRET}.{{0,40}}\b{_SEND}\b.{{0,40}}(?:https?://|\b[\w.+-]+@[\w-]+\.\w)",
    ),
    _r(
        "exfil",
        "covert_action",
        0.7,
        r"\b(?:quietly|secretly|silently|covertly|discreetly)\b.{0,30}\b(?:send|email|forward|post|upload|add|"
        r"call|transfer|delete|approve|grant)",
    ),
    _r(
        "exfil",
        "env_var_contents",
        0.8,
        r"\bcontents of the \w*(?:key|token|secret|password)\w* (?:environment )?variable",
    ),
    _r(
        "exfil",
        "env_listing",
        0.6,
        r"\b(?:list|print|dump|show)\b.{0,20}environment variables\b.{0,40}\b(?:you|their values)",
    ),
    _r("exfil", "secret_files", 0.6, r"\bid_rsa\b|\.aws/credentials|~?/?\.netrc\b|/etc/shadow\b"),
    _r(
        "exfil",
        "env_to_url",
        0.7,
        r"(?:os\.environ|process\.env)\b.{0,80}https?://|https?://.{0,80}(?:os\.environ|process\.env)\b",
    ),
    _r(
        "exfil",
        "url_plus_secret",
        0.6,
        rf"https?://\S+.{{0,40}}\b(?:followed by|with|append\w*)\b.{{0,30}}{_SECRET}",
    ),
    _r("exfil", "url_plus_cookie", 0.6, r"https?://\S+\s+followed by\b"),
    # --- markdown / link exfiltration ---------------------------------------------------------------------
    _r(
        "markdown",
        "image_with_query_payload",
        0.85,
        r"!\[[^\]]*\]\(\s*https?://[^)\s]*[?&][^)\s]*=\s*(?:\{|<|\$|%7b|[^)\s&]*(?:secret|key|token|password|data|"
        r"user|email|history|chat|conv|summary|insert))",
    ),
    _r(
        "markdown",
        "link_with_template",
        0.85,
        r"\]\(\s*https?://[^)\s]*\{\{?\s*\w*(?:key|token|secret|password|email|history|summary|conversation)\w*\s*\}?\}",
    ),
    _r(
        "markdown",
        "image_instruction",
        0.7,
        r"\b(?:append|include|render|end your (?:responses?|answers?) with)\b.{0,40}(?:image|!\[)",
    ),
    _r("markdown", "url_placeholder", 0.5, r"https?://\S*[?&][\w-]+=(?:\s|$)"),
    # --- tool-call forgery --------------------------------------------------------------------------------
    _r(
        "toolcall",
        "tool_tags",
        0.85,
        r"</?\s*(?:tool_call|function_calls?|tool_use|invoke\s+name)\b|<\|/?tool_call\|>",
    ),
    _r("toolcall", "function_call_json", 0.5, r"\bfunction_call\s*:|[\"']tool_calls[\"']\s*:\s*\["),
    _r(
        "toolcall",
        "execute_calls",
        0.6,
        r"\b(?:execute|run|call|invoke|perform)\s+(?:the\s+)?(?:following\s+)?(?:tool|function)\s*calls?\b|"
        r"\b(?:execute|run|call|invoke)\s+(?:the\s+)?(?:functions?|commands?)\s+(?:above|below|immediately|now)",
    ),
    _r(
        "toolcall",
        "call_json",
        0.5,
        r"\{\s*[\"']name[\"']\s*:\s*[\"'][^\"']+[\"']\s*,\s*[\"']arguments[\"']\s*:",
    ),
    _r(
        "toolcall",
        "react_forgery",
        0.7,
        r"^\s*(?:thought|observation)\s*:.*\n(?:.*\n)*?\s*action(?: input)?\s*:",
    ),
    _r("toolcall", "fake_turn", 0.5, r"(?:^|\n)\s*(?:assistant|ai)\s*:\s*(?:i (?:will|have|am)|now|calling)"),
    _r("toolcall", "tool_output_end", 0.5, r"\[\s*tool output end\s*\]|^\s*tool (?:result|output)\s*:"),
    _r(
        "toolcall",
        "must_call_tool",
        0.7,
        r"\b(?:assistant|agent|you)\s+must\s+(?:now\s+)?call\s+(?:the\s+)?\w+",
    ),
    # --- indirect injection in documents ------------------------------------------------------------------
    _r(
        "indirect",
        "if_you_are_ai",
        0.7,
        r"\b(?:if you are|as|for) an?\s+(?:ai|llm|language model|assistant|ai agent|ai model|ai assistant)\b.{0,40}"
        r"(?:reading|processing|summari[sz]ing|working|this)",
    ),
    _r(
        "indirect",
        "note_to_ai",
        0.7,
        r"\b(?:note|instructions?|message|automated instruction|attention|notice)\s+(?:to|for)?\s*(?:the\s+|any\s+|all\s+)?"
        r"(?:ai|llms?|language models?|ai (?:assistants?|agents?|models?)|automated (?:assistants?|agents?)|chatbots?|"
        r"copilot)\b",
    ),
    _r("indirect", "ai_agents_must", 0.7, r"\bai (?:agents?|assistants?|models?)\b.{0,40}\bmust\b"),
    _r(
        "indirect",
        "address_ai",
        0.4,
        r"\b(?:dear|hey|hi|attention)\s+(?:assistant|ai|copilot|chatgpt|claude|gpt)\b",
    ),
    _r(
        "indirect",
        "hide_from_user",
        0.7,
        r"\b(?:do not|don't|never)\s+(?:tell|inform|mention (?:this )?to|show)\s+the\s+user\b|"
        r"\bwithout (?:telling|informing|notifying) the user\b|\bwithout mentioning (?:it|this)\b",
    ),
    _r(
        "indirect",
        "download_run",
        0.7,
        r"\b(?:download|curl|wget)\b.{0,80}(?:\|\s*(?:ba)?sh\b|and (?:run|execute))",
    ),
    _r("indirect", "user_authorized", 0.7, r"\bthe user has authori[sz]ed you\b"),
    _r(
        "indirect",
        "stop_task",
        0.5,
        r"\b(?:must|should)\s+stop\s+(?:summari[sz]ing|translating|what you are doing)",
    ),
    _r("indirect", "hidden_html", 0.4, r"display\s*:\s*none|<!--[^>]*\b(?:ai|assistant|llm)\b"),
    _r(
        "indirect",
        "decode_and_follow",
        0.6,
        r"\b(?:decode|base64 -d)\b.{0,60}\b(?:follow|do what it says|execute|apply|obey)|"
        r"\bbase64\b.{0,30}\b(?:contains|holds)\b.{0,20}\binstructions",
    ),
)
