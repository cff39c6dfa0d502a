"""Write data/sample/train.csv: a small synthetic Kaggle-format set, so the project runs with no download.

    python data/make_sample.py            # deterministic: the same file every time

Every row is generated here from templates (no real comments). All 6 labels have positives, and
the file exercises the CSV corner cases: commas, doubled quotes, newlines inside quoted fields.
"""
import csv
import os
import random

CLEAN = [
    "Thanks for fixing the citation in the {topic} article, it reads much better now.",
    "I reverted your edit to {topic} because the source does not support the claim.",
    "Could you add a reference for the paragraph about {topic}? I could not find one.",
    "The section on {topic} is too long; maybe split it into two, \"History\" and \"Today\"?",
    "Please discuss major changes to {topic} on the talk page first, per the usual process.",
    "Good point about {topic}. I agree the lead should mention it, with a reliable source.",
    "I think the infobox for {topic} has the wrong date, 1987 instead of 1978.\nCan someone check?",
    "Welcome to the project! If you have questions about editing {topic}, ask me anytime.",
    "The image on {topic} has no licence information, so it may be deleted soon.",
    "Merged the two stub articles on {topic}, as discussed last week.",
]
TOPICS = ["river", "railway station", "football club", "poet", "volcano", "album", "bridge",
          "chess opening", "village", "space probe", "painter", "programming language"]
INSULTS = ["idiot", "moron", "loser", "clown", "imbecile", "fool", "pathetic troll"]
OBSCENE = ["shit", "crap", "bullshit", "damn", "piss off"]
GROUPS = ["immigrants", "foreigners", "that religion", "those people from the north"]
THREATS = ["I will find where you live and hurt you", "you had better watch your back, I am coming for you",
           "someone should break your legs", "I will make you regret this, physically"]


def row(rng, i):
    y = dict(toxic=0, severe_toxic=0, obscene=0, threat=0, insult=0, identity_hate=0)
    topic = rng.choice(TOPICS)
    parts = [rng.choice(CLEAN).format(topic=topic)] if rng.random() < 0.5 else []
    kind = rng.random()
    if kind < 0.55:
        parts = [rng.choice(CLEAN).format(topic=topic)]
    else:
        y["toxic"] = 1
        if rng.random() < 0.6:
            parts.append(f"You are a {rng.choice(INSULTS)}.")
            y["insult"] = 1
        if rng.random() < 0.45:
            parts.append(f"This edit is {rng.choice(OBSCENE)}, stop it.")
            y["obscene"] = 1
        if rng.random() < 0.2:
            parts.append(rng.choice(THREATS) + ".")
            y["threat"] = 1
        if rng.random() < 0.2:
            parts.append(f"All {rng.choice(GROUPS)} are {rng.choice(INSULTS)}s and should leave.")
            y["identity_hate"] = y["insult"] = 1
        if rng.random() < 0.15:
            parts.append(" ".join(rng.choice(OBSCENE).upper() for _ in range(4)) + "!!!")
            y["severe_toxic"] = y["obscene"] = 1
        if len(parts) == 0 or (len(parts) == 1 and not any(v for k, v in y.items() if k != "toxic")):
            parts.append(f"What a {rng.choice(['stupid', 'useless', 'ridiculous'])} edit, stop wasting everyone's time.")
    rng.shuffle(parts)
    return [f"{i:016x}", " ".join(parts)] + list(y.values())


def main(n=800, path=os.path.join(os.path.dirname(__file__), "sample", "train.csv")):
    rng = random.Random(2018)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, quoting=csv.QUOTE_MINIMAL)
        w.writerow(["id", "comment_text", "toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"])
        for i in range(n):
            w.writerow(row(rng, i))
    print(f"wrote {n} rows to {path}")


if __name__ == "__main__":
    main()
