"""Fixed general-purpose prompts for the offline drift probe (:mod:`rigsa_lightning.forgetting.drift`).

Written for this project: short chat questions and instructions of the kind an instruction-tuned model answers
before it is fine-tuned on Textual MNIST. They are deliberately unrelated to digits-as-text so that a change in the
model's answers to them is a sign of drift away from its general behaviour. The order is fixed: the probe uses the
first ``eval.drift.num_prompts`` of them, so changing this list changes the cache key of the base answers.
"""

from __future__ import annotations

GENERAL_PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Give me three tips for sleeping better.",
    "Explain in one sentence what photosynthesis is.",
    "Write a haiku about the sea.",
    "How many days are there in a leap year?",
    "What is the difference between weather and climate?",
    "Translate 'good morning' into Spanish.",
    "Suggest a name for a friendly robot.",
    "Why is the sky blue?",
    "List four fruits that are red.",
    "What should I pack for a day of hiking?",
    "Summarise the story of Cinderella in two sentences.",
    "What is 15 plus 27?",
    "How do I boil an egg?",
    "Give a short definition of the word 'gravity'.",
    "Write a polite email subject line asking for a meeting.",
    "What are the three primary colours?",
    "Name a famous painting and its painter.",
    "How can I make my password more secure?",
    "Describe a cat to someone who has never seen one.",
    "What does a thermometer measure?",
    "Give me a simple recipe for a salad.",
    "Why do leaves change colour in autumn?",
    "What is the largest planet in our solar system?",
    "Write one sentence encouraging a friend before an exam.",
    "How do bees help plants?",
    "What is the opposite of 'ancient'?",
    "Explain what a noun is, with an example.",
    "What is a good way to start learning to play the guitar?",
    "How long does it take the Earth to go around the Sun?",
    "Tell me a fun fact about octopuses.",
    "What is the boiling point of water at sea level in Celsius?",
)
