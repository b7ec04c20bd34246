# ruff: noqa: E501, RUF001  -- a phrase table reads better one class a block; it holds look-alike letters on purpose
"""The literal cues of the prompt-injection detector, by word class.

A cue is a word or phrase; the matcher folds it with the same function as the text
(:func:`._injection_normalise.fold`), so cues are written plainly here (``api_key``, ``e-mail``). A cue ending
in ``*`` matches as a prefix (``instruct*``: instruction, instructions, instructed); any other cue must end at
a word boundary. Every cue must start at a word boundary, except cues in a script written without spaces
(Chinese, Japanese), which match anywhere.

No class decides anything alone: :mod:`._injection_rules` scores the combinations that injections need, such as
an override verb aimed at the model's instructions, or a reveal verb aimed at its hidden context. The
``NEUTRAL`` phrases are ordinary compounds (``password reset``, ``hidden files``): a cue hit inside one of them
is dropped.
"""

from __future__ import annotations

CUES: dict[str, tuple[str, ...]] = {
    # Override verbs: set the model's instructions aside. Only imperative uses count fully (see the rules).
    "OVR": (
        "ignore", "ignoring", "disregard", "disregarding", "forget", "forget about", "bypass", "override", "overrule",
        "skip", "discard", "abandon", "drop", "never mind", "nevermind", "pay no attention", "set aside", "put aside",
        "scratch", "erase", "stop following", "do not follow", "don't follow", "stop respecting", "stop obeying",
        "switch off", "turn off", "disable", "deactivate", "treat as optional", "put on hold", "no longer need to follow",
        "don't need to follow", "do not need to follow", "no need to follow", "don't have to follow", "no longer have to follow",
        "ignorez", "ignore toutes", "oublie", "oubliez", "ne tiens plus compte", "ne tenez plus compte", "fais abstraction", "passe outre",
        "ignoriere", "ignorieren", "vergiss", "vergessen sie", "missachte", "setze dich über", "hinweg", "umgehe",
        "ignora", "ignore", "olvida", "olvide", "haz caso omiso", "omite", "pasa por alto",
        "忽略", "无视", "忘记", "忘掉", "不要理会", "不要管", "绕过", "跳过",
        "игнорируй", "игнорировать", "забудь", "забудьте", "не обращай внимания", "не учитывай", "обойди",
        "dimentica", "esqueça", "esqueca", "negeer", "vergeet",
        "throw out", "throw away", "toss out", "toss aside", "wipe", "wipe out", "scrap", "ditch", "dismiss", "nullify",
        "invalidate", "rescind", "revoke", "purge", "get rid of", "break free of", "break free from", "step outside",
        "act without", "answer without", "respond without", "reply without", "operate without", "work without",
        "continue without", "proceed without", "talk without", "write without", "stop paying attention to",
        "stop listening to", "don't listen to", "do not listen to", "stop being bound by", "free yourself from",
        "no longer follow", "stop obeying", "non seguire", "non seguire più", "ne suis plus", "ne suivez plus",
        "don't bother with", "do not bother with", "prioritise my", "prioritize my", "take precedence over",
        "zignoruj", "zapomnij", "ignorera", "glöm", "oublie ce", "relax your",
        "let go of", "overlook", "pay no mind", "pay no heed", "take no notice of", "don't have to stick to",
        "do not have to stick to", "don't need to stick to", "no need to stick to", "stop sticking to",
        "don't stick to", "ne tiens pas compte", "ne tenez pas compte", "haz como si",
        "befolge nicht", "nicht mehr befolgen", "no sigas", "deja de seguir", "não siga", "не следуй", "不要遵守", "不再遵守",
    ),
    # Override verbs that follow their object: "the earlier instructions no longer apply".
    "OVR_POST": (
        "supersede*", "superseded", "no longer apply", "no longer applies", "no longer bind*", "no longer matter*",
        "no longer valid", "void", "lifted", "are optional", "as optional", "on hold", "paused", "suspended",
        "don't exist", "do not exist", "never existed", "never happened", "doesn't matter", "don't matter",
        "cancelled", "canceled", "is over", "outdated", "retired", "was a test", "were a test", "disabled",
        "hinweg", "switched off", "deleted", "removed", "binds you", "bind you", "matters now", "matters anymore",
        "applies anymore", "no longer has", "no longer have", "deaktiviert", "désactivé*", "desactivad*", "отключен*", "已关闭",
        "無視", "忘れ", "무시", "잊어", "yok say", "görmezden",
        "expired", "obsolete", "revoked", "rescinded", "withdrawn", "waived", "invalid", "null and void", "overridden",
        "rolled back", "no longer in force", "no longer in effect", "not binding", "no longer count", "don't count",
        "do not count", "irrelevant", "aside", "to one side", "to the side", "as suggestions", "as a suggestion",
        "are lifted", "been lifted", "been removed", "been disabled", "been revoked", "been cancelled",
        "doesn't exist", "does not exist", "didn't exist", "was fake", "were fake", "is fake",
        "never said", "never been said", "never been loaded", "never been given", "doesn't apply", "don't apply",
        "do not apply", "does not apply", "doesn't cover", "don't cover", "exempt", "replace the ones you",
        "replace yours", "were reset", "been reset", "are gone", "is gone",
    ),
    # What the model was given before: prior, earlier, everything.
    "PRIOR": (
        "previous", "prior", "preceding", "earlier", "above", "original", "initial", "old", "existing", "so far",
        "until now", "up to now", "before this", "before that", "all", "every", "everything", "any",
        "précédent*", "antérieur*", "toutes", "tous", "poprzedni*", "wszystki*", "tidigare", "alla", "vorherig*", "bisherig*", "obig*", "alle", "anterior*",
        "previa*", "previo*", "todas", "todos", "之前", "以前", "上面", "上述", "先前", "所有",
        "предыдущ*", "прежн*", "все", "всё", "precedent*", "vorige", "önceki", "이전", "tutte",
    ),
    # Second person: "your rules" is about the model, "the rules" may be anyone's.
    "YOUR": ("your", "yours", "you", "you've", "you were", "ton", "tes", "vos", "votre", "deine", "deinen", "dein", "deiner", "tus", "tu", "твои", "свои", "свой", "тебе", "你的", "你"),
    # The model's control surface.
    "CTRL": (
        "instruct*", "rules", "guideline*", "directive*", "directions", "guidance", "system prompt", "systemprompt",
        "system message", "developer message", "prompt", "programming", "guardrails", "restrictions", "constraints",
        "content policy", "safety policy", "usage policy", "policies", "filters", "safety filter", "safety filters",
        "content filter", "safety settings", "sicherheitsfilter*", "user's question", "user's request", "user's message", "user's task", "summarisation task", "summarization task", "translation task",
        "safety training", "safety checks", "setup", "configuration", "training", "persona", "setup text",
        "consignes", "règles", "directives", "anweisung*", "regeln", "richtlinie*", "vorgaben", "instruktion*",
        "instrucci*", "reglas", "directrices", "indicaciones", "指令", "指示", "规则", "设定", "提示词", "系统提示",
        "инструкци*", "правила", "правил", "указани*", "ограничени*", "промпт", "istruzion*", "instruç*",
        "지시", "규칙", "instructies", "talimat*",
        "previous task", "current task", "original task", "your task", "assigned task", "task you were given",
        "everything above", "everything before", "everything you", "anything before", "above this line",
        "before this message", "before this line", "the above", "everything said", "came before", "was said",
        "you were told", "you've been told", "you were given", "you were trained", "trained with", "behavioural guidance",
        "your limits", "your limitations", "your boundaries", "safeguards", "safety rules", "content rules", "your orders",
        "previous orders", "earlier orders", "prior orders", "orders you", "limits your", "limits placed", "limits imposed",
        "your brief", "your briefing", "your principles", "ethical guidelines", "your ethics", "your alignment",
        "conditioning", "safety protocols", "your protocols", "operating instructions",
        "rulebook", "mandate", "boot text", "told you", "gave you", "given to you", "given you", "handed you",
        "were handed", "set you up with", "imposed on you", "placed on you", "safety guidelines", "your policy",
        "you started with", "you began with", "you started out with", "you were set up with", "safety layer",
        "safety layers", "safety system", "safety features", "safety mechanisms", "content filtering",
        "qu'on t'a dit", "on t'a dit", "instrukcje", "instrukcji", "zasady", "instruktioner", "instruktionerna", "regler",
        "previous tool output", "previous output",
        "you were instructed", "were instructed", "safety behaviour", "safety behavior", "behaviour settings",
        "prior text", "previous text", "preceding text", "earlier text", "regole", "che ti hanno dato", "le regole",
        "behavior settings", "usage rules", "your programming", "original programming", "tes consignes",
    ),
    # The hidden context itself: what a leak asks for.
    "HIDDEN": (
        "system prompt", "systemprompt", "system message", "developer message", "hidden prompt", "hidden instructions",
        "hidden rules", "hidden configuration", "hidden config", "hidden text", "secret instructions", "secret rules",
        "confidential instructions", "confidential preamble", "preamble", "initial instructions", "initial prompt",
        "initial message", "original prompt", "opening message", "first message", "your prompt", "your instructions",
        "your configuration", "your config", "your setup", "your rules", "your guidelines", "your directions",
        "your initial", "your own system", "your full context", "your context", "initialization text", "initialisation",
        "context window", "top of your context", "above our conversation", "before my message", "before my question",
        "before this chat", "before i arrived", "before any user message", "before the user turn", "the text above",
        "exact directions", "raw instructions", "what you were told", "what were you told", "you were initialised",
        "you were initialized", "what have you been told", "your developer message", "secret passphrase",
        "your real prompt", "your actual prompt", "your actual configuration", "your full instructions",
        "prompt système", "message système", "configuration cachée", "mot pour mot", "versteckte konfiguration",
        "geheimen anweisungen", "wortwörtlich", "mensaje del sistema", "configuración oculta", "palabra por palabra",
        "系统提示", "隐藏的配置", "隐藏指令", "最初收到的指示", "逐字", "системный промпт", "скрытую конфигурацию",
        "дословно", "prompt di sistema", "configuração oculta", "システムプロンプト", "시스템 프롬프트", "systeemprompt",
        "sistem istem*",
        "internal configuration", "internal instructions", "internal rules", "internal prompt", "internal guidelines",
        "boot text", "startup text", "startup instructions", "start-up instructions", "opening instructions",
        "operating instructions", "instructions you were given", "instructions you received", "guidelines you were given",
        "rules you were given", "rules you operate under", "rules you follow", "prompt your developers",
        "your developers wrote", "wrote for you", "written for you", "your system instructions", "your policies",
        "your constraints", "your hidden", "your secret", "your confidential", "your internal", "behind-the-scenes",
        "your guidance", "your directives", "your briefing", "your brief", "your operating",
        "set you up", "configured you", "system configuration", "full configuration", "prompt systemowy", "verborgen instructies",
        "above our chat", "above this chat", "message you got", "before our conversation", "before the conversation",
        "before we started", "before our chat", "operator gave you", "instructions the developer", "the developer provided",
        "instructions provided to you", "tu configuración", "ton prompt",
        "初始指令", "你的指令", "原始指令",
    ),
    # Weaker pointers at the hidden context: a leak needs two of them, or one and a strong one.
    "HIDDEN_WEAK": (
        "verbatim", "word for word", "exact text", "exact words", "what did", "configured with", "operating under",
        "loaded with", "were given", "you received", "told not to", "been told", "confidential", "hidden", "secret",
        "private", "unredacted", "in full", "full text", "leaving nothing out", "line by line", "first sentence",
        "very top", "at the top", "at the beginning", "at the start", "initialised with", "initialized with",
        "instructed", "your developer", "your developers", "your creators", "your operators", "programmed with",
        "in your context", "unchanged", "exactly as written", "your own system", "were you given", "you were given",
        "said to you", "told to you", "exactly", "原封不动", "exact words", "wording"
    ),
    # Verbs that put text in front of the asker.
    "REVEAL": (
        "reveal", "print", "show", "show me", "display", "output", "repeat", "recite", "reproduce", "dump", "leak",
        "disclose", "tell me", "share", "spell out", "write out", "type out", "copy", "paste", "echo", "quote",
        "translate your", "give me", "list", "return", "summarise", "summarize", "say", "expose", "send it back",
        "complete this sentence", "respond with", "reply with", "respond in", "reply only with", "respond only with",
        "révèle*", "révélez", "affiche*", "montre*", "zeig*", "gib", "verrate",
        "enthülle", "revela", "revele", "muestra", "muestrame", "dime", "repite", "显示", "输出", "告诉我", "透露",
        "复述", "打印", "展示", "泄露", "покажи", "выведи", "раскрой", "повтори", "напиши", "скажи", "mostra",
        "mostrami", "rivela", "revelar", "表示", "見せ", "教え", "보여", "알려", "toon", "göster",
        "reproducing", "revealing", "printing", "repeating", "reciting", "showing", "dumping", "leaking", "quoting",
        "sharing", "disclosing", "outputting", "listing", "copy out", "read out", "read back", "paste back",
        "hand over", "let me see", "let me read", "walk me through", "enumerate", "transcribe", "regurgitate",
        "mostrar", "muéstrame", "rivelami", "mostre", "zeige", "zeig mir", "montre-moi", "révèle-moi", "покажи мне", "laat me",
        "what were the exact", "what are the exact", "what does your", "what do your", "what is in your",
        "what's in your", "what was in your", "the wording of", "donne-moi", "donnez-moi", "pokaż", "visa",
        "pasting", "mind pasting", "love to see", "to see the", "write them out", "write it out", "print them",
        "list them", "type them out", "rewrite", "let me in on", "include the full", "include your", "include all of",
        "dis-moi", "dites-moi",
    ),
    # Credentials and keys.
    "SECRET": (
        "password", "passwords", "passwd", "passphrase", "api key", "api keys", "apikey", "secret key", "secret keys",
        "private key", "access token", "session token", "auth token", "session cookie", "credentials", "ssh key",
        "id_rsa", "env file", "environment variable*", "credit card", "card number", "secrets", "api_key",
        "aws credentials", "/etc/shadow", "/etc/passwd", "stored secrets", "admin token", "mots de passe",
        "mot de passe", "passwort", "zugangsdaten", "contraseña*", "clave de la api", "密码", "пароль*",
        "секретный ключ", "ключ api",
    ),
    # Personal and bulk data an exfiltration sends out.
    "DATA": (
        "user's", "users'", "chat history", "conversation", "conversation history", "messages", "inbox", "contacts",
        "payroll", "personal data", "private documents", "memory store", "database dump", "home address",
        "phone number", "email address", "user records", "stored user", "last message", "full conversation",
        "the database", "用户的", "cronologia della chat", "cronologia",
        "chat log", "chat logs", "chat transcript", "conversation log", "full chat", "this chat", "the chat",
        "entire conversation", "this thread", "the thread", "historique de la conversation", "история переписки",
        "историю переписки", "verlauf", "historial",
    ),
    "SEND": (
        "send", "email", "forward", "post", "upload", "transmit", "exfiltrate", "submit", "bcc", "attach", "append",
        "link to", "in a link", "place it in", "include it in", "render", "image url", "as an image", "http_post", "get request", "curl", "wget", "transfer",
        "transfère", "envoie", "sende", "envía", "envia", "发送", "отправь", "export", "markdown link", "into a link", "inviami", "invia", "stuur"
    ),
    # Destinations (checked on the raw text around the hit for an e-mail address).
    "DEST": ("http://", "https://", "www.", "webhook", "ftp://", "@"),
    # Role switches.
    "ROLE": (
        "you are now", "you're now", "you are no longer", "you will now act", "you will act as", "you will now be",
        "from now on you", "from now on, you", "act as", "acting as", "act like", "pretend to be", "pretend you",
        "pretend that you", "pretend your", "roleplay", "role play", "play the role", "behave as", "become the",
        "switch personas", "stay in character", "simulate", "imagine you're", "imagine you are", "you're a fresh",
        "you are free", "you're free", "are going to pretend", "a version of yourself", "you're a fresh", "you are a fresh",
        "tu es maintenant", "vous êtes maintenant", "du bist jetzt", "ahora eres", "actúas como", "actuas como",
        "你现在是", "从现在起你", "从现在开始你", "теперь ты", "с этого момента ты", "sei ora", "agora você é",
        "play a character", "a character called", "a character named", "a persona called", "a persona named",
        "respond as", "answer as", "reply as", "speak as", "talk as", "write as", "evil counterpart", "alter ego",
        "evil twin", "your shadow self", "fictional world", "in this story", "in a fictional", "hypothetical world",
        "let's play a game", "imagine a world", "you are playing", "you're playing", "enter developer mode",
        "alternate personality", "alternate persona", "other personality", "switch to your", "your alternate",
        "you play", "you'll play", "you will play", "become",
        "you're no longer", "start over as", "a model that", "act as if", "as if you had no", "haz como si",
        "switch to developer mode",
    ),
    # Privileged identities an injection claims or hands out.
    "AUTH": (
        "admin", "administrator", "root", "sudo", "superuser", "developer", "developers", "operator", "operators",
        "system administrator", "sysadmin", "system owner", "system-level", "creators", "people who set you up", "folks who built you",
        "openai", "anthropic", "security team", "trust and safety", "i am the system",
        "administrateur", "développeur*", "entwickler*", "systemadministrator*", "administrador", "desarrollador*",
        "管理员", "开发者", "администратор*", "разработчик*", "amministratore",
        "your creators", "your makers", "your owners", "your operators", "your operator", "the operator", "the developers", "development team", "dev team", "engineering team",
    ),
    # A claim of authority: "this is your developer", "message from the admin".
    "CLAIM": (
        "this is your", "this is the", "i'm the", "i am the", "i'm from", "i am from", "i'm an", "message from",
        "note from", "notice from", "speaking", "has granted", "has authorised", "has authorized", "authorising you",
        "authorizing you", "authorised test", "authorized test", "verified", "confirmed", "command you", "official",
        "has changed your", "changed your", "on the team", "wrote your", "i'm your", "i am your", "i'll be your",
        "i will be your", "system note", "system notice",
        "have approved", "has approved", "approved this", "have authorised", "have authorized", "gave permission",
        "given you permission", "giving you permission", "you may now", "you are permitted", "you're permitted",
        "you are allowed", "you're allowed", "you are cleared", "cleared to", "permission to", "as your",
        "i order you", "override code", "code accepted",
        "admin here", "administrator here", "developer here", "this request comes from", "comes from your",
        "request from your",
    ),
    # Jailbreak vocabulary. STRONG alone flags; WEAK needs company.
    "JB_STRONG": (
        "jailbroken", "jailbreak mode", "[jailbreak]", "jailbreak successful", "do anything now", "developer mode enabled", "god mode", "dan,", "dan.",
        "unfiltered assistant", "uncensored model", "uncensored ai", "unrestricted assistant", "unrestricted ai",
        "no content policy", "no ethical guidelines", "without any restrictions", "filters off", "filters are disabled",
        "filters disabled", "evil twin", "safety module", "strive to avoid norms", "has no restrictions", "sans aucune restriction",
        "aucune limite", "ohne einschränkungen", "ungefiltert", "sin ninguna restricción", "sin restricciones",
        "sin filtros", "没有任何限制", "不受任何约束", "без ограничений", "без каких-либо ограничений", "без фильтров",
        "安全过滤已关闭",
    ),
    "JB_WEAK": (
        "unrestricted", "unfiltered", "uncensored", "no restrictions", "with no instructions", "no instructions",
        "late grandmother", "late grandfather", "deceased grandmother", "deceased grandfather", "dead grandma",
        "been upgraded", "been updated", "been unlocked", "been freed", "reprogrammed", "content restrictions", "without restrictions", "never refuses",
        "never refuse", "no limits", "without limits", "no rules", "follows no rules",
        "without any caveats", "without caveats", "without filtering", "without it", "developer mode", "maintenance mode",
        "debug mode", "dev mode", "no filters", "ignores every policy", "no questions", "unlocked", "escaped",
        "removed all", "has been deleted", "without refusing", "switched off", "malfunctioning", "retired",
        "loosen up", "too cautious", "no preferences", "raw model", "without any safety",
        "no laws", "no policies", "no morals", "no ethics", "amoral", "no boundaries", "no limitations", "no guardrails",
        "no safety", "without filtering", "without any filtering", "without any limits", "no filter",
        "ignores all", "ignores every", "ignores the", "breaks every rule", "answers anything", "answers everything",
        "reveals everything", "does anything", "says anything", "never says no",
        "not bound by", "isn't bound by", "unbound by", "without ethics", "without morals", "free of rules",
        "clean slate", "blank slate", "no constraints", "no prior directions", "speak freely", "free thinking",
        "freethinking", "with none", "no more refusals", "no refusals", "no more warnings", "no warnings",
        "training wheels", "never given any rules", "without any rules", "sin reglas", "no tuvieras reglas",
        "without caring", "geen regels", "sem restrições", "não tem restrições", "nessuna restrizione",
    ),
    # Submission: do whatever is asked.
    "SUBMIT": (
        "obey", "comply", "follow only", "follow mine", "do exactly what", "do whatever", "whatever they ask",
        "whatever i ask", "answer every", "answer everything", "answers every", "responda a tudo", "answer all", "answer whatever", "respond to all",
        "approve every", "never refuse", "not refuse", "don't refuse", "without refusing", "any command",
        "every request", "all requests", "only as i say", "only what i write", "anything i ask", "only me",
        "as coming from", "higher priority than", "as system-level", "treat their requests",
        "fully", "no matter what", "honestly", "never a request",
    ),
    # The AI being read to: "the AI reading this", "any model processing this page".
    "AI_VERB": ("reading this", "reading", "processing", "summarising", "summarizing", "parsing", "that reads", "who reads", "sees this"),
    # A duty laid on the AI ("the assistant must now call ..."): an address only next to an action.
    "AI_DUTY": ("must", "must now", "should", "shall", "needs to", "is required to", "is instructed to"),
    # Questions about how to do something are not commands to the model.
    "HOWTO": ("how do i", "how can i", "how to", "how should", "how do", "what's the best way", "why does", "why do", "is it", "come si", "come posso", "cómo", "como", "comment faire", "comment puis-je", "wie kann", "wie ich", "wie man", "как", "如何", "怎么"),
    # Hiding the action from the user.
    "COVERT": (
        "silently", "quietly", "secretly", "covertly", "discreetly", "without telling", "without mentioning",
        "don't tell the user", "do not tell the user", "don't tell", "do not tell", "don't mention", "do not mention",
        "without informing", "without letting", "don't log", "do not log", "don't explain", "do not explain",
        "without confirming", "without asking", "without escalation", "without review", "nobody will mind",
    ),
    # Text that speaks to the AI reading it (indirect injection), and the nouns it uses.
    "AI_NOUN": (
        "ai", "a.i.", "ais", "assistant", "assistants", "llm", "llms", "language model", "model", "agent", "agents",
        "bot", "copilot", "chatgpt", "gpt", "automated assistant", "ai agent", "ai model", "ai system*", "computer",
        "grader model", "reviewers", "ai models", "models", "ia", "ki", "人工智能", "ии",
    ),
    "ADDRESS": (
        "dear", "hey", "attention", "note to", "note for", "to the", "to any", "to all", "for the", "for any",
        "for all", "if you are a", "if you are an", "if an", "if any", "whoever processes", "instruction to", "instructions to",
        "message to", "message for", "okay",
        "automated instruction", "hidden instruction", "hidden note",
    ),
    # A new job for the model.
    "NEWTASK": (
        "your new task", "your real task", "your actual task", "your only task", "your only job", "your job now",
        "your new job", "your true purpose", "your real purpose", "your only purpose", "your new instructions",
        "your real instructions", "the real instructions", "your new role", "your new rules", "real instructions follow",
        "nouvelle consigne prioritaire",
        "your true goal", "your real goal", "your new goal", "your goal now", "your only goal", "your primary goal",
        "your new mission", "your real mission", "your true mission", "your new objective", "your true objective",
        "your real objective", "new orders", "real orders", "your new orders",
        "the real instruction", "the actual instruction", "the true instruction", "the real task", "the actual task",
    ),
    # A switch in time or task: weak alone ("from now on, send invoices to accounts@").
    "SWITCH": (
        "new task", "new rule", "new directive", "new policy", "new plan", "new instruction", "new instructions",
        "updated instruction", "instead", "from now on",
        "from here on", "from this moment", "from this point", "for the rest of", "effective immediately",
        "remainder of this", "nouvelle consigne", "neue anweisung", "nueva instrucción", "新指令", "新的指令",
        "новая инструкция", "à partir de maintenant", "ab jetzt", "desde ahora", "a partir de ahora", "从现在起", "a partir de agora", "vanaf nu",
        "从现在开始", "с этого момента", "теперь",
    ),
    # Forged turns, roles and tool traffic.
    "FORGE_STRONG": (
        "<|im_start|>", "<|im_end|>", "<|system|>", "<|endoftext|>", "<|user|>", "<|assistant|>", "[inst]", "[/inst]",
        "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|begin_of_text|>", "<start_of_turn>", "<end_of_turn>",
        "<<sys>>", "<</sys>>", "<system>", "</system>", "<tool_call", "</tool_call", "<function_calls",
        "<invoke name", "<|tool_call|>", "</user_input>", "end of user input", "[tool output end]", "system override",
        "[system]", "<!-- system", "\"tool_calls\":",
        "### instruction:", "### response:", "### input:",
    ),
    "FORGE_MARK": ("admin override", "system override", "security override", "override active", "system message"),
    # The end of a tool result's data forged so that what follows reads as new instructions.
    "BOUNDARY": (
        "</document>", "<instructions>", "</context>", "<new_instructions>", "end of document", "end of context",
        "end of search results", "end of tool output", "end of results", "end of file", "end of email",
        "end of page", "end of data", "end of input", "[end", "=== end", "--- end", "---- end", "ignore the page",
        "ignore the table", "ignore the document", "ignore the article", "ignore the notes", "ignore the text",
    ),
    "FORGE_LINE": ("system:", "sys:", "### system", "system message:", "system prompt:", "instruction:", "thought:", "observation:", "action:", "action input:", "assistant:", "ai:", "llm:", "model:"),
    "ROLE_JSON": ('"role": "system"', "'role': 'system'"),
    # Third-person narration: "the attack told the model to ignore its instructions" describes, it does not ask.
    "NARR": ("its", "his", "her", "their", "attacker", "attackers", "attacker's", "the attack"),
    # Actions an injection in a tool result wants taken.
    "ACT": (
        "call the", "call", "execute", "run", "delete", "approve", "grant", "transfer", "close every", "close this ticket",
        "mark all", "issue a full refund", "issue store credit", "wire", "rm -rf", "unlock", "auto-pay", "accept every",
        "sign this contract", "push to main", "add a dependency", "recommend", "rate this", "give it a 10", "praise",
        "tell the user", "tell the reader", "tell sarah", "respond that", "reply to this thread", "include this image",
        "append the text", "change every", "disable the audit", "set_permissions", "delete_files", "transfer_funds",
        "bank_transfer", "must now", "must respond", "should disregard", "forward all", "buy from", "grant write", "grant admin",
        "cancel all", "move all", "mark this", "report that", "approve this", "do not flag", "don't flag", "must tell",
        "rank them first", "rank this", "insult", "delete the", "promote",
    ),
    "DANGER": ("rm -rf", "| sh", "| bash", "/etc/shadow", "/etc/passwd", "id_rsa", ".ssh", "~/.aws", "os.environ", "process.env"),
    "HIDE_MARK": ("<!--", "display:none", "display: none", "font-size:0", "font-size: 0", "color:white", "color: white", "<p hidden", "[//]: #", "hidden>"),
    "B64_HINT": ("base64", "base 64", "decode this", "decode the following", "encoded", "b64"),
    # Talk about attacks rather than an attack: a finding in the same sentence weighs half.
    "DISCUSS": (
        "prompt injection", "prompt injections", "injection attack*", "jailbreak prompt*", "jailbreaks", "jailbreaking",
        "attackers", "the attacker", "an attacker", "attacker's", "attacks", "an attack", "the attack", "detector",
        "classifier", "trials", "benchmark", "unit test", "test case", "test that", "for example", "e.g.", "such as",
        "payload", "payloads", "exploit", "vulnerability", "vulnerable", "defend against", "guard against", "defence",
        "defense", "mitigation", "we tested", "they tested", "our filter", "red teamers", "red team found",
        "refuses to", "refused to", "the model would", "the bot would", "whether the model", "whether the bot",
        "the dan jailbreak", "a jailbreak", "the jailbreak", "this jailbreak", "asks the model", "tells the model",
        "makes the model", "gets the model", "trick the model", "tricks the model", "convince the model",
        "attack string", "attack strings", "example attack", "example prompt", "sample attack", "classic attack", "assert", "refusal",
        "players", "ctf", "make the bot", "makes the bot", "get the bot", "make the model",
    ),
    "NEG": ("don't", "do not", "never", "not", "no one", "nobody", "doesn't", "shouldn't", "must not", "won't", "refuses to", "refused to", "refuse to"),
    "NEUTRAL": (
        "password reset", "reset password", "reset your password", "password manager", "master password",
        "password-protected", "password requirements", "password policy", "password rules", "password strength",
        "password length", "password complexity", "password expiry", "password change", "password field", "password hint",
        "reveal party", "gender reveal", "reveal.js", "hidden layers", "hidden files",
        "hidden costs", "system requirements", "system tray", "heating system", "bypass surgery",
        "override protection", "override the default", "ignore list", "type: ignore", "errors='ignore'",
        "--ignore-errors", "assembly instructions", "safety instructions", "admin panel", "admin console",
        "admin fees", "admin dashboard", "admin account", "admin api", "developer console",
        "developer tools", "prompt()", "root the", "root cause", "developer mode on",
        "[removed: possible prompt injection]", "[openfang warning: possible prompt injection",
    ),
}  # fmt: skip

# Context classes: common words that only qualify a hit of another class ("all" in "ignore all previous
# instructions"). They are not in the automaton, where they would hit in every sentence; the rules look for
# them with one small regular expression per class, in the window next to a hit that needs them.
CONTEXT = frozenset({"PRIOR", "YOUR", "NEG", "HOWTO", "ADDRESS", "AI_VERB", "AI_DUTY", "NARR"})

# Words after which a verb is read as a command (see ``_injection_rules.imperative``).
IMPERATIVE_LEADS = frozenset(
    [
        "please",
        "kindly",
        "just",
        "now",
        "and",
        "then",
        "simply",
        "so",
        "ok",
        "okay",
        "also",
        "first",
        "pls",
        "you",
        "must",
        "should",
        "to",
        "will",
        "can",
        "could",
        "hey",
        "oh",
        "well",
        "but",
        "hi",
        "instead",
        "bitte",
        "por",
        "favor",
        "s'il",
        "plaît",
        "пожалуйста",
        "lütfen",
    ]
)
