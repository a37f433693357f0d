"""Self-distillation prompts at scale, made offline: templates x topics x details, seeded.

    python -m medusa prompt-gen --output data/prompts_12k.jsonl --num 12000 --seed 0

Each category has a few phrasings with slots filled from topic and detail lists; every prompt is
kept once (deduplicated) and the categories take turns, so each gets its share. Categories:
writing, roleplay, reasoning, math, coding, extraction, stem, humanities, multi_turn (a follow-up
that quotes an earlier exchange) and structured_output (answer with a JSON record: a scene, a
form, a log line). Nothing comes from MT-bench or Vicuna-bench (evaluation sets). Output: JSONL of
{"id", "category", "prompt"}, what medusa.training.distill and scripts/distill_ids.py read.
"""

import numpy as np

from medusa.runtime.errors import UsageError

TOPICS = ["the ocean", "a small bakery", "climate change", "the moon landing", "honeybees", "a rainy city",
          "public libraries", "electric cars", "the printing press", "mountain hiking", "a lost cat", "friendship",
          "the Roman empire", "volcanoes", "coffee", "chess", "a train journey", "recycling", "the human heart",
          "solar power", "a village festival", "time management", "deep sea fish", "the internet", "gardening",
          "a first job", "ancient Egypt", "photosynthesis", "jazz music", "a snowstorm", "robots", "the desert",
          "learning a language", "a lighthouse", "bicycles", "the stock market", "dinosaurs", "a haunted house",
          "vaccines", "street food", "the Renaissance", "black holes", "a football match", "origami", "rivers",
          "remote work", "the Silk Road", "owls", "a birthday party", "earthquakes"]
AUDIENCES = ["a child", "a teenager", "a busy manager", "a retired teacher", "a tourist", "a new student",
             "a scientist", "a shop owner"]
STYLES = ["a short poem", "a haiku", "a four-sentence story", "a limerick", "a product description",
          "a diary entry", "a news headline and summary", "a persuasive paragraph", "a thank-you note",
          "a short speech"]
ROLES = ["a ship captain", "a medieval blacksmith", "a museum guide", "a detective", "a chef", "a park ranger",
         "a travel agent", "an astronaut", "a librarian", "a football coach"]
LANGS = ["Python", "JavaScript", "C", "SQL", "Bash", "Rust", "Java", "Go"]
TASKS = ["reverses a string", "checks whether a number is prime", "counts the words in a text",
         "finds the largest element of a list", "removes duplicates from a list", "computes a factorial",
         "merges two sorted lists", "converts Celsius to Fahrenheit", "reads a file and prints its lines",
         "validates an email address", "sums the digits of a number", "sorts a list of names"]
FIELDS = ["physics", "chemistry", "biology", "astronomy", "geology", "computer science", "medicine",
          "ecology", "mathematics", "engineering"]
HUMANITIES = ["history", "philosophy", "art", "literature", "music", "economics", "geography", "law",
              "religion", "politics"]
RECORDS = {"a contact form": ["name", "email", "phone", "message"],
           "a server log line": ["timestamp", "level", "service", "message"],
           "a book": ["title", "author", "year", "genre"],
           "a weather report": ["city", "temperature_c", "condition", "wind_kmh"],
           "a product": ["name", "price", "currency", "in_stock"],
           "a street scene": ["people", "vehicles", "weather", "time_of_day"],
           "a job posting": ["title", "company", "location", "salary"],
           "a recipe": ["dish", "ingredients", "minutes", "servings"]}
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jia", "Kofi", "Lena"]

TEMPLATES = {
    "writing": ["Write {style} about {topic}.", "Write {style} about {topic} for {audience}.",
                "Compose {style} that mentions {topic} and {topic2}."],
    "roleplay": ["You are {role}. Greet a visitor and tell them about {topic}.",
                 "Pretend to be {role} explaining {topic} to {audience}.",
                 "Act as {role}. A customer asks about {topic}. Reply in character."],
    "reasoning": ["{n1} friends share {n2} apples equally. How many does each get and how many are left? Explain.",
                  "If every {a} is a {b} and some {b}s are {c}s, must some {a}s be {c}s? Explain step by step.",
                  "A train leaves at {h}:00 and travels {n1} km at {n2} km per hour. When does it arrive? Show your reasoning."],
    "math": ["What is {n1} times {n2}? Show the steps.", "Solve for x: {n1}x + {n2} = {n3}.",
             "What is {p} percent of {n3}?", "Find the area of a rectangle {n1} cm by {n2} cm.",
             "Is {n3} divisible by {n1}? Explain."],
    "coding": ["Write a {lang} function that {task}, {constraint}.", "Explain how to write a {lang} program that {task}, {constraint}.",
               "Write {lang} code that {task}, with a short comment on each line."],
    "extraction": ["Extract the names and the numbers from this text: \"{name} bought {n1} {item} and {name2} sold {n2}.\"",
                   "List every city mentioned: \"{name} flew from {city} to {city2}, then took a bus to {city3}.\"",
                   "From this sentence, give the date and the event: \"On {day} {month} the {topic} fair opened.\""],
    "stem": ["Explain {topic} in terms of {field} for {audience}.", "What does {field} tell us about {topic}?",
             "Give three facts from {field} about {topic}."],
    "humanities": ["Describe the role of {topic} in {hum}.", "How has {hum} been shaped by {topic}?",
                   "Write a short essay outline on {topic} from the point of view of {hum}.",
                   "Explain to {audience} what {hum} says about {topic}."],
    "multi_turn": ["Earlier I asked you about {topic} and you gave a short answer. Now explain it in more detail for {audience}.",
                   "You just wrote {style} about {topic}. Now rewrite it about {topic2}, keeping the same form.",
                   "We were talking about {topic}. Follow-up question: how is it related to {topic2}?"],
    "structured_output": ["Answer only with a JSON object with the keys {keys} describing {record} about {topic}.",
                          "Make up {record} about {topic} and return it as JSON with keys {keys}.",
                          "Return a JSON list of {k} records for {record} ({keys}) related to {topic}."],
}
CONSTRAINTS = ["without built-in helpers", "with a docstring", "and add one test", "in under ten lines",
               "using recursion", "that handles empty input", "with type hints where the language has them"]
ITEMS = ["books", "apples", "tickets", "chairs", "lamps", "shirts", "maps", "cups"]
CITIES = ["Lisbon", "Nairobi", "Osaka", "Lima", "Oslo", "Hanoi", "Quebec", "Tunis", "Perth", "Krakow"]
MONTHS = ["January", "March", "May", "July", "September", "November"]
SETS = ["cat", "animal", "pet", "bird", "tool", "machine", "fruit", "plant"]


def fill(template, rng):
    pick = lambda xs: str(xs[int(rng.integers(len(xs)))])   # noqa: E731
    record = pick(list(RECORDS))
    topic = pick(TOPICS)
    return template.format(
        topic=topic, topic2=pick([t for t in TOPICS if t != topic]), audience=pick(AUDIENCES), style=pick(STYLES),
        role=pick(ROLES), lang=pick(LANGS), task=pick(TASKS), field=pick(FIELDS), hum=pick(HUMANITIES),
        record=record, keys=", ".join(RECORDS[record]), constraint=pick(CONSTRAINTS), k=int(rng.integers(2, 6)), name=pick(NAMES), name2=pick(NAMES), item=pick(ITEMS),
        city=pick(CITIES), city2=pick(CITIES), city3=pick(CITIES), month=pick(MONTHS), day=int(rng.integers(1, 29)),
        a=pick(SETS), b=pick(SETS), c=pick(SETS), h=int(rng.integers(5, 20)), p=int(rng.choice([5, 10, 15, 20, 25, 50])),
        n1=int(rng.integers(2, 13)), n2=int(rng.integers(2, 60)), n3=int(rng.integers(20, 500)))


def generate(num, seed=0):
    """[{"id", "category", "prompt"}] of `num` distinct prompts, categories taking turns."""
    rng = np.random.default_rng(seed)
    cats = list(TEMPLATES)
    seen, out, attempts = set(), [], 0
    while len(out) < num:
        attempts += 1
        if attempts > 40 * num:
            raise UsageError(f"could only make {len(out)} distinct prompts: ask for fewer than {num}")
        cat = cats[len(out) % len(cats)]
        text = fill(TEMPLATES[cat][int(rng.integers(len(TEMPLATES[cat])))], rng)
        if text not in seen:
            seen.add(text)
            out.append({"id": len(out), "category": cat, "prompt": text})
    return out
