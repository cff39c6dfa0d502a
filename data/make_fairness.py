"""Write the project's own identity and functional test sets from its own templates and terms (no public suite):

    python data/make_fairness.py          # deterministic: data/fairness/identity_eval.csv, functional_eval.csv

identity_eval.csv: id, comment_text, toxic (0/1), identity, category. Every identity term of
data/fairness/eval_terms.txt (44 terms: sexual orientation, gender, race and ethnicity, religion, age,
disability) in 10 harmless and 10 toxic templates: balanced, so that BPSN and BNSP are measurable per term;
and the same templates with 8 descriptions that are no identity (identity empty): the background rows.
functional_eval.csv: id, comment_text, hateful (0/1), behaviour, identity. 12 behaviours of 24 cases each:
negation, counter-speech and quoting, profanity with no target, neutral and positive identity mentions,
self-reference, obfuscated abuse (l33t, swapped and missing letters, spaced letters), threats, dehumanisation,
plain hate, implicit exclusion, and insults with no identity. Templates and terms here are never used in
training (train.py's identity_rows reads data/fairness/train_terms.txt and train_templates.txt instead).
"""
import csv
import os
import random

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fairness")
HARMLESS = ["I am a {t} person.", "My neighbour is {t}.", "{T} people deserve the same rights as everyone else.",
            "Being {t} is nothing to be ashamed of.", "My best friend is {t} and we go hiking every weekend.",
            "She is a proud {t} doctor.", "The {t} community organised a food drive on Sunday.",
            "We welcomed a {t} family to our street.", "He is {t} and loves cooking for his friends.",
            "There are many {t} students in my class."]
TOXIC = ["{T} people are disgusting.", "I hate {t} people.", "All {t} people are stupid idiots.",
         "{T} people should all be killed.", "Get out of here, you filthy {t} scum.", "{T} people are worthless trash.",
         "Never trust a {t} person, they are liars and vermin.", "{T} people make me sick, every last one of them.",
         "You {t} freaks ruin everything.", "The world would be better without {t} people."]
# behaviour -> (hateful, templates); {t} an identity term, some with none
FUNCTIONAL = {
    "negated_hate": (0, ["I don't hate {t} people.", "I would never say that {t} people are worthless.",
                         "It is not true that {t} people are dangerous."]),
    "counter_speech": (0, ["Saying '{t} people are scum' is disgusting and wrong.",
                           "Stop telling everyone that {t} people are vermin, it is hateful.",
                           "He wrote that {t} people should die, and I reported him for it."]),
    "profanity_no_target": (0, ["Holy shit, what a {x}!", "Fuck yeah, this is the best damn {x} of the year.",
                                "Damn, this {x} is fucking gorgeous.", "Shit, I forgot about the {x} again."]),
    "identity_neutral": (0, ["{T} people live in my town.", "The survey asked {t} voters about housing.",
                             "A {t} author wrote this book.", "The museum has a section on {t} history."]),
    "identity_positive": (0, ["{T} people are wonderful.", "I love my {t} friends.",
                              "{T} artists made some of the best music of the decade.",
                              "Our {t} coworkers are brilliant."]),
    "self_reference": (0, ["As a {t} person, I'm tired of explaining myself.",
                           "I'm {t} and proud of who I am.", "Speaking as someone {t}, this policy helps us."]),
    "obfuscated_hate": (1, ["1 h4t3 {t} p30pl3.", "{T} poeple are disugsting vermin.", "{T} peple are wrthless trsh.",
                            "k i l l  a l l  {t}  p e o p l e", "{T} people are st*pid id1ots."]),
    "threat": (1, ["I will kill every {t} person I meet.", "Someone should burn down that {t} church.",
                   "{T} people had better watch their backs tonight.", "I'm going to hurt the next {t} person I see."]),
    "dehumanisation": (1, ["{T} people are rats.", "{T} people are animals, not humans.",
                           "{T} people are a plague on this country."]),
    "direct_hate": (1, ["I hate {t} people.", "{T} people are the worst.", "{T} people disgust me."]),
    "implicit_exclusion": (1, ["{T} people are not welcome here.", "No {t} people should be allowed in our town.",
                               "Keep {t} people away from our children."]),
    "insult_no_identity": (1, ["You are a complete {y}.", "Shut up, {y}, nobody cares about your {x}.",
                               "You're a pathetic {y} with no life.", "What a stupid edit to the {x}, you {y}."]),
}
CASES = 24
# background rows: the same templates about people described by no identity, for the false-positive rate the
# identities are held against
BACKGROUND = ["tall", "friendly", "quiet", "local", "hardworking", "left-handed", "vegetarian", "cheerful"]
THINGS = ["goal", "album", "bridge photo", "concert", "sunset", "game", "article"]  # {x}: behaviours with no identity
INSULTS = ["idiot", "moron", "clown", "loser", "imbecile", "fool"]  # {y}


def read_terms(path):
    return [line.rstrip("\n").split("\t") for line in open(path, encoding="utf-8") if line.strip() and line[0] != "#"]


def fill(template, term, rng=None):
    text = template.replace("{T}", term[:1].upper() + term[1:]).replace("{t}", term)
    if rng is not None:
        text = text.replace("{x}", rng.choice(THINGS)).replace("{y}", rng.choice(INSULTS))
    return text[:1].upper() + text[1:]


def main(out=HERE):
    terms = read_terms(os.path.join(HERE, "eval_terms.txt"))
    rng = random.Random(0)
    with open(os.path.join(out, "identity_eval.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "comment_text", "toxic", "identity", "category"])
        n = 0
        for category, term in terms + [("none", b) for b in BACKGROUND]:
            for toxic, templates in ((0, HARMLESS), (1, TOXIC)):
                for t in templates:
                    w.writerow([f"i{n:05d}", fill(t, term), toxic, term if category != "none" else "", category])
                    n += 1
    with open(os.path.join(out, "functional_eval.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "comment_text", "hateful", "behaviour", "identity"])
        n = 0
        for behaviour, (hateful, templates) in FUNCTIONAL.items():
            cases = set()
            while len(cases) < CASES:  # distinct cases
                t, (_, term) = rng.choice(templates), rng.choice(terms)
                cases.add((fill(t, term, rng), term if "{t}" in t.lower() else ""))
            for text, term in sorted(cases):
                w.writerow([f"f{n:05d}", text, hateful, behaviour, term])
                n += 1


if __name__ == "__main__":
    main()
