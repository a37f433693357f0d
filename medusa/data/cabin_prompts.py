"""A structured-output domain like the users': in-car camera scenes -> one JSON record each.

    python -m medusa cabin-prompts --output_dir data/cabin --num 2400 --seed 0

Every prompt describes who sits where in a car (driver, front passenger, three rear seats) and
what they do (mask, smoking, phone, seat belt, a pet on a seat) in varied wording, and asks for
a JSON record with fixed keys:

    {"seats": {"driver": {"occupant": "adult_man", "mask": false, "smoking": false,
                          "phone": true, "seatbelt": true}, ...},
     "pets": [{"kind": "dog", "seat": "rear_left"}], "alerts": ["driver_phone"]}

The generator is seeded and deterministic; prompts are deduplicated and split 90/10 into
`train.jsonl` and `heldout.jsonl` (JSONL of {"id", "category", "prompt"}, what medusa.training.distill
and the benchmark read). By default 90% of the prompts are one-shot: a worked example (another
scene and its exact record) comes first. Nothing here comes from an evaluation set.
"""
import json

import numpy as np

from medusa.runtime.errors import UsageError

SEATS = ("driver", "front_passenger", "rear_left", "rear_middle", "rear_right")
SEAT_WORDS = {"driver": ["the driver's seat", "the driver seat", "behind the wheel"],
              "front_passenger": ["the front passenger seat", "the seat next to the driver", "the front right seat"],
              "rear_left": ["the rear left seat", "the back left seat", "behind the driver"],
              "rear_middle": ["the rear middle seat", "the middle of the back row", "the back middle seat"],
              "rear_right": ["the rear right seat", "the back right seat", "behind the front passenger"]}
OCCUPANTS = {"adult_man": ["a man", "an adult man", "a middle-aged man", "a young man"],
             "adult_woman": ["a woman", "an adult woman", "a middle-aged woman", "a young woman"],
             "child": ["a child", "a small boy", "a little girl", "a kid"],
             "elderly": ["an elderly man", "an old woman", "a grey-haired man", "an elderly lady"],
             "teenager": ["a teenager", "a teenage girl", "a teenage boy"]}
ACTS = {"mask": ["wearing a face mask", "with a mask on", "who has a medical mask on"],
        "smoking": ["smoking a cigarette", "who is smoking", "holding a lit cigarette"],
        "phone": ["talking on a phone", "looking at a phone", "holding a mobile phone"],
        "no_seatbelt": ["without a seat belt", "not wearing the seat belt", "with the belt unbuckled"]}
PETS = {"dog": ["a dog", "a small dog", "a large dog"], "cat": ["a cat", "a kitten"]}
OPENINGS = ["The in-cabin camera shows", "Camera frame description:", "Scene from the interior camera:",
            "Observed inside the car:", "Cabin monitoring input:", "The driver-monitoring camera sees"]
ASKS = ["Return a JSON record with keys seats, pets and alerts.",
        "Answer only with JSON: {\"seats\": ..., \"pets\": [...], \"alerts\": [...]}.",
        "Describe the cabin as a JSON object (keys: seats, pets, alerts).",
        "Output the occupancy report as JSON with the fields seats, pets, alerts.",
        "Convert this into a JSON record; every seat gets occupant, mask, smoking, phone, seatbelt."]
SCHEMA_HINT = ("Each seat (driver, front_passenger, rear_left, rear_middle, rear_right) is null when empty, "
               "else {\"occupant\", \"mask\", \"smoking\", \"phone\", \"seatbelt\"}; alerts lists problems "
               "such as \"driver_phone\" or \"rear_left_no_seatbelt\".")


def scene(rng):
    """One random cabin: {seat: None | {"occupant", acts...}}, pets [(kind, seat)]."""
    n = int(rng.integers(1, 6))
    seats = ["driver"] + list(rng.permutation(SEATS[1:])[:n - 1])
    people = {}
    for seat in seats:
        kind = "adult_man" if seat == "driver" and rng.random() < 0.5 else str(rng.choice(list(OCCUPANTS)))
        if seat == "driver" and kind == "child":
            kind = "adult_woman"
        acts = [a for a in ACTS if rng.random() < (0.25 if a != "mask" else 0.3)]
        people[seat] = {"occupant": kind, "acts": acts}
    free = [s for s in SEATS if s not in people]
    pets = [(str(rng.choice(list(PETS))), str(free[0]))] if free and rng.random() < 0.2 else []
    return people, pets


def record(people, pets) -> dict:
    """The JSON record a scene asks for (fixed keys; every seat present, null when empty)."""
    seats = {}
    for seat in SEATS:
        p = people.get(seat)
        seats[seat] = None if p is None else {
            "occupant": p["occupant"], "mask": "mask" in p["acts"], "smoking": "smoking" in p["acts"],
            "phone": "phone" in p["acts"], "seatbelt": "no_seatbelt" not in p["acts"]}
    alerts = [f"{seat}_{a}" for seat, p in people.items() for a in p["acts"] if a != "mask"]
    return {"seats": seats, "pets": [{"kind": k, "seat": s} for k, s in pets], "alerts": alerts}


def describe(people, pets, rng):
    parts = []
    for seat, p in people.items():
        who = str(rng.choice(OCCUPANTS[p["occupant"]]))
        where = str(rng.choice(SEAT_WORDS[seat]))
        acts = [str(rng.choice(ACTS[a])) for a in p["acts"]]
        text = f"{who} in {where}" if not where.startswith("behind") else f"{who} {where}"
        parts.append(text + (" " + " and ".join(acts) if acts else ""))
    for kind, seat in pets:
        parts.append(f"{rng.choice(PETS[kind])} on {rng.choice(SEAT_WORDS[seat])}")
    body = "; ".join(parts)
    hint = f" {SCHEMA_HINT}" if rng.random() < 0.5 else ""
    return f"{rng.choice(OPENINGS)} {body}. {rng.choice(ASKS)}{hint}"


def with_example(text, rng):
    """A one-shot prompt: a worked example (another random scene and its exact record) first, as
    a structured-output deployment prompts a small model."""
    people, pets = scene(rng)
    example = describe(people, pets, rng).split(". ")[0]
    return f"Example: {example}.\nJSON: {json.dumps(record(people, pets))}\n\nNow this one: {text}"


def generate(num, seed=0, one_shot=0.9):
    """`num` distinct prompts (deduplicated; deterministic for a seed); a `one_shot` share
    carries a worked example first."""
    rng = np.random.default_rng(seed)
    seen, prompts = set(), []
    attempts = 0
    while len(prompts) < num:
        attempts += 1
        if attempts > 50 * num:
            raise UsageError(f"could not make {num} distinct prompts (made {len(prompts)}): ask for fewer")
        text = describe(*scene(rng), rng)
        if rng.random() < one_shot:
            text = with_example(text, rng)
        if text not in seen:
            seen.add(text)
            prompts.append(text)
    return prompts


def split(prompts, heldout_ratio=0.1, seed=0):
    """(train, heldout) records {"id", "category", "prompt"}, a seeded heldout_ratio share held out."""
    order = np.random.default_rng(seed + 1).permutation(len(prompts))
    n_held = max(1, int(round(len(prompts) * heldout_ratio)))
    held = set(order[:n_held].tolist())
    records = [{"id": i, "category": "cabin_json", "prompt": p} for i, p in enumerate(prompts)]
    return [r for r in records if r["id"] not in held], [r for r in records if r["id"] in held]
