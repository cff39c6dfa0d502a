"""The HTTP APIs' formats, with no server in them: /v1/classify's request, Perspective's AnalyzeCommentRequest and
AnalyzeCommentResponse, and the JSON error every route answers with. serve.py routes requests to these.

    texts, thresholds = classify_request(body, clf, limits)          # RequestError(code, field, message) if bad
    text, wanted = analyze_request(body, limits, attributes(clf.labels))
    perspective_response(result, wanted, body, attributes(clf.labels))
"""
from classifier import PolicyError

# Perspective's attribute for each of Jigsaw's labels. An export's other labels are served under their own
# name in capitals; labels it lacks are not offered.
PERSPECTIVE = {"TOXICITY": "toxic", "SEVERE_TOXICITY": "severe_toxic", "PROFANITY": "obscene", "THREAT": "threat",
               "INSULT": "insult", "IDENTITY_ATTACK": "identity_hate"}


class RequestError(Exception):
    """A request that cannot be answered: its HTTP status, the field at fault, and a message naming it."""

    def __init__(self, code, field, message):
        super().__init__(message)
        self.code, self.field = code, field


def error_body(code, field, message):
    status = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE",
              500: "INTERNAL"}.get(code, "UNKNOWN")
    return {"error": {"code": code, "status": status, "message": message, "field": field}}


def attributes(labels):
    """{Perspective attribute: label} for an export's labels, in label order."""
    named = {label: attr for attr, label in PERSPECTIVE.items()}
    return {named.get(label, label.upper()): label for label in labels}


def check_text(text, field, limits):
    if not isinstance(text, str):
        raise RequestError(400, field, f"{field}: expected a string, got {type(text).__name__}")
    if len(text) > limits["max_chars"]:
        raise RequestError(413, field, f"{field}: {len(text):,} characters, over the limit of "
                                       f"{limits['max_chars']:,} (--max_chars)")
    return text


def check_object(body, allowed, field="body"):
    if not isinstance(body, dict):
        raise RequestError(400, field, f"{field}: expected a JSON object")
    unknown = [k for k in body if k not in allowed]
    if unknown:
        raise RequestError(400, f"{field}.{unknown[0]}" if field != "body" else unknown[0],
                           f"{unknown[0]!r}: unknown field; expected {', '.join(allowed)}")


def classify_request(body, clf, limits):
    """/v1/classify's body -> (texts, thresholds), or RequestError naming the field."""
    check_object(body, ("texts", "policy", "thresholds"))
    texts = body.get("texts")
    if not isinstance(texts, list) or not texts:
        raise RequestError(400, "texts", "texts: expected a non-empty list of strings")
    if len(texts) > limits["max_texts"]:
        raise RequestError(413, "texts", f"texts: {len(texts):,} texts, over the limit of {limits['max_texts']} "
                                         f"a request (--max_texts)")
    texts = [check_text(t, f"texts[{i}]", limits) for i, t in enumerate(texts)]
    try:
        return texts, clf.thresholds(body.get("policy"), body.get("thresholds"))
    except PolicyError as e:
        raise RequestError(400, str(e).split()[0].rstrip(":"), str(e)) from None


def analyze_request(body, limits, attrs):
    """Perspective's AnalyzeCommentRequest -> (text, {attribute: scoreThreshold or None})."""
    check_object(body, ("comment", "requestedAttributes", "languages", "doNotStore", "clientToken", "context",
                        "spanAnnotations", "sessionId", "communityId"))
    comment = body.get("comment")
    check_object(comment, ("text", "type"), "comment")
    if comment.get("type", "PLAIN_TEXT") != "PLAIN_TEXT":
        raise RequestError(400, "comment.type", f"comment.type: {comment['type']!r}; only PLAIN_TEXT is supported")
    text = check_text(comment.get("text"), "comment.text", limits)
    langs = body.get("languages") or ["en"]
    if not isinstance(langs, list) or not any(isinstance(x, str) and x.lower().startswith("en") for x in langs):
        raise RequestError(400, "languages", f"languages: {langs!r}; this model reads English (en) only")
    wanted = body.get("requestedAttributes")
    if not isinstance(wanted, dict) or not wanted:
        raise RequestError(400, "requestedAttributes", "requestedAttributes: expected an object naming at least "
                                                       f"one of {', '.join(attrs)}")
    out = {}
    for name, opts in wanted.items():
        field = f"requestedAttributes.{name}"
        if name not in attrs:
            raise RequestError(400, field, f"{field}: not an attribute of this model; it has {', '.join(attrs)}")
        check_object(opts or {}, ("scoreType", "scoreThreshold"), field)
        if (opts or {}).get("scoreType", "PROBABILITY") != "PROBABILITY":
            raise RequestError(400, f"{field}.scoreType", f"{field}.scoreType: only PROBABILITY is supported")
        t = (opts or {}).get("scoreThreshold")
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 1):
            raise RequestError(400, f"{field}.scoreThreshold", f"{field}.scoreThreshold: {t!r} is not in [0, 1]")
        out[name] = t
    return text, out


def perspective_response(result, wanted, body, attrs):
    """Classifier's dict (with windows) -> Perspective's AnalyzeCommentResponse."""
    scores = {}
    for name, t in wanted.items():
        label = attrs[name]
        value = result["scores"][label]
        if t is not None and value < t:  # Perspective leaves out attributes below their scoreThreshold
            continue
        scores[name] = {"spanScores": [{"begin": w["begin"], "end": w["end"],
                                        "score": {"value": w["scores"][label], "type": "PROBABILITY"}}
                                       for w in result["windows"]],
                        "summaryScore": {"value": value, "type": "PROBABILITY"}}
    out = {"attributeScores": scores, "languages": body.get("languages") or ["en"], "detectedLanguages": ["en"]}
    if "clientToken" in body:
        out["clientToken"] = body["clientToken"]
    return out


