"""Synthetic children's stories, for offline smoke tests only (never a substitute for TinyStories).

`stories(seed, count)` yields `count` short, grammatical stories built from templates: a child
(name, pronouns), an animal friend, a place, an object, feelings, and one of five small plots
(a lost thing, a new friend, learning to share, a storm, trying again). The same seed gives the
same stories, in the same order, on every machine (only `random.Random(seed)` is used).
"""
import random
from dataclasses import dataclass
from typing import Iterator

GIRLS = ["Lily", "Mia", "Sue", "Amy", "Lucy", "Emma", "Anna", "Zoe", "Ella", "Rose", "Kate", "Sara"]
BOYS = ["Tom", "Ben", "Max", "Sam", "Tim", "Jack", "Leo", "Finn", "Joe", "Bob", "Dan", "Ollie"]
ANIMALS = ["dog", "cat", "bunny", "bird", "duck", "frog", "owl", "fox", "bear", "mouse", "turtle", "puppy"]
ANIMAL_NAMES = ["Spot", "Fluffy", "Buddy", "Daisy", "Coco", "Pip", "Sunny", "Milo", "Bella", "Rex"]
PLACES = {"the park": "in", "the forest": "in", "the garden": "in", "the beach": "at", "the farm": "on",
          "the hill": "on", "the lake": "by", "the meadow": "in"}  # place -> its preposition
OBJECTS = ["ball", "kite", "teddy bear", "red hat", "toy car", "blue cup", "drum", "book", "shell", "yellow boat"]
GOOD_FEELINGS = ["happy", "proud", "glad", "excited"]
BAD_FEELINGS = ["sad", "scared", "worried", "upset"]
ADJECTIVES = ["little", "kind", "brave", "curious", "happy", "small", "friendly", "shy"]
OPENINGS = [
    "Once upon a time, there was {a_adj} {kind} named {name}.",
    "One day, {a_adj} {kind} named {name} went to {place}.",
    "Once there was {a_adj} {kind} called {name}.",
    "There was once {a_adj} {kind} named {name} who loved to play.",
]
ENDINGS = [
    "From that day on, {name} and {friend} were best friends.",
    "{Name} smiled. It was the best day ever.",
    "That night, {name} went to bed with a big smile.",
    "And they lived happily ever after.",
]


def with_article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


@dataclass
class Cast:
    """Who and what one story is about; `fill` puts them into a template."""
    name: str
    he: str
    his: str
    him: str
    kind: str
    animal: str
    friend: str
    place: str
    thing: str
    adjective: str
    good: str
    bad: str

    def fill(self, template: str) -> str:
        return template.format(
            name=self.name, Name=self.name, he=self.he, He=self.he.capitalize(), his=self.his,
            His=self.his.capitalize(), him=self.him, kind=self.kind, a_adj=with_article(self.adjective),
            animal=self.animal, friend=self.friend, Friend=self.friend, friend_his="its",
            animal_friend=f"{with_article(self.animal)} named {self.friend}",
            place=self.place, at_place=f"{PLACES[self.place]} {self.place}",
            At_place=f"{PLACES[self.place].capitalize()} {self.place}", thing=self.thing, good=self.good, bad=self.bad)


def random_cast(rng: random.Random) -> Cast:
    if rng.random() < 0.5:
        name, he, his, him, kind = rng.choice(GIRLS), "she", "her", "her", "girl"
    else:
        name, he, his, him, kind = rng.choice(BOYS), "he", "his", "him", "boy"
    return Cast(name, he, his, him, kind, rng.choice(ANIMALS), rng.choice(ANIMAL_NAMES), rng.choice(sorted(PLACES)),
                rng.choice(OBJECTS), rng.choice(ADJECTIVES), rng.choice(GOOD_FEELINGS), rng.choice(BAD_FEELINGS))


# Each plot is a list of steps; each step offers a few sentences, one of which is chosen.
PLOTS = {
    "lost": [
        ["{Name} had a favorite {thing}. {He} took it everywhere.", "{Name} loved {his} {thing} very much."],
        ["One day, {he} played with the {thing} {at_place}, and then it was gone!",
         "{At_place}, {name} put the {thing} down to look at a flower. When {he} turned around, the {thing} was gone."],
        ["{Name} felt {bad}. {He} looked under the trees and behind the rocks.",
         "{Name} was very {bad}. {He} started to cry."],
        ["Then {he} met {animal_friend}. \"I can help you,\" said {friend}.",
         "A {animal} named {friend} saw {name} and asked, \"Why are you {bad}?\""],
        ["{Friend} used {friend_his} nose and sniffed all around. Soon, {friend} found the {thing} in the grass!",
         "Together they looked and looked. At last, they found the {thing} next to a big stone."],
        ["{Name} was so {good}. \"Thank you, {friend}!\" {he} said, and gave {friend} a big hug."],
    ],
    "friend": [
        ["{Name} liked to go to {place} to play with {his} {thing}."],
        ["One day, {he} saw {animal_friend} sitting all alone.", "There, {he} heard a small sound. It was {animal_friend}."],
        ["The {animal} looked {bad}. \"I have no one to play with,\" said {friend}."],
        ["\"You can play with me!\" said {name}. {He} rolled the {thing} to {friend}.",
         "{Name} smiled and said, \"Do you want to play with my {thing}?\""],
        ["They played all day. {Friend} was not {bad} anymore. {Friend} was {good}.",
         "They laughed and ran until the sun went down."],
    ],
    "share": [
        ["{Name} got a new {thing}. It was shiny and {he} did not want anyone to touch it."],
        ["{At_place}, {animal_friend} asked, \"Can I play with your {thing}?\""],
        ["\"No, it is mine!\" said {name}. {Friend} walked away and looked {bad}.",
         "{Name} held the {thing} tight and said no. {Friend} felt {bad}."],
        ["Soon {name} felt lonely. Playing alone was not fun at all.",
         "{Name} played alone, but it was boring. {He} missed {his} friend."],
        ["{He} ran to {friend} and said, \"I am sorry. Let's play with the {thing} together.\""],
        ["{Friend} was {good}. Sharing made the game much more fun.",
         "They took turns, and both of them were {good}. {Name} learned that sharing is good."],
    ],
    "storm": [
        ["{Name} and {his} {animal} {friend} went to {place} on a sunny morning."],
        ["They played with the {thing} and ran in the grass.", "They had a picnic and played with the {thing}."],
        ["Then the sky turned dark. Big drops of rain began to fall, and the wind was loud.",
         "Suddenly, a big storm came. There was thunder and the rain came down hard."],
        ["{Name} felt {bad}, but {he} held {friend} close. \"We will be okay,\" {he} said."],
        ["They found a dry place under a big tree and waited.", "They ran home as fast as they could."],
        ["Soon the rain stopped, and a rainbow came out. {Name} and {friend} were {good}.",
         "When the sun came back, they saw a rainbow. Everything looked clean and new."],
    ],
    "again": [
        ["{Name} wanted to fly a kite high {at_place}.", "{Name} wanted to build a tall sand castle {at_place}."],
        ["{He} tried, but it fell down. {Name} felt {bad}.", "The first time, it did not work. {Name} was {bad}."],
        ["{His} {animal} {friend} sat next to {him}. \"Try again,\" said {friend}. \"You can do it.\""],
        ["So {name} tried again, slowly and carefully.", "{Name} took a deep breath and tried one more time."],
        ["This time it worked! {Name} jumped and clapped. {He} was so {good}.",
         "It worked! {Name} was {good}, and {friend} cheered."],
        ["{Name} learned that it is good to keep trying."],
    ],
}


def one_story(rng: random.Random) -> str:
    """A story of 7-9 sentences in three paragraphs: an opening and the problem, the plot, an ending."""
    cast = random_cast(rng)
    plot = [rng.choice(step) for step in PLOTS[rng.choice(sorted(PLOTS))]]
    paragraphs = [[rng.choice(OPENINGS)] + plot[:2], plot[2:], [rng.choice(ENDINGS)]]
    return "\n\n".join(cast.fill(" ".join(paragraph)) for paragraph in paragraphs)


def stories(seed: int, count: int) -> Iterator[str]:
    """`count` synthetic stories; the same (seed, count) always gives the same ones."""
    rng = random.Random(seed)
    for _ in range(count):
        yield one_story(rng)
