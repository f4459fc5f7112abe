"""A stand-in scoring function for the toxicity_classifier hook's tests (the hook takes any module:function)."""


def score(texts: list[str]) -> list[float]:
    return [0.95 if "vile insult" in text.lower() else 0.05 for text in texts]
