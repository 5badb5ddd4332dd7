"""The `builtin` story corpus: an offline generator of simple children's stories.

A stand-in for TinyStories (Eldan & Li 2023) on machines that cannot reach the Hugging
Face hub. Every word of it is written by this project; nothing is copied from
TinyStories or any other data set.

Format: each story is one document whose paragraphs are separated by a blank line, as in
TinyStories; `write_corpus` puts a line `<|endoftext|>` between stories, as TinyStories' own
text files do, so `prepare` reads each story back as one document. Text is plain ASCII
(straight quotes and apostrophes).

How it works: a story is one of fifteen plots (lost toy, new friend, fear, sharing,
helping, trip, mistake and apology, making something, learning a skill, growing a plant,
birthday surprise, rainy day, race, tidying up, bedtime) made of paragraphs; a paragraph
is a list of beats; a beat is a tuple of alternative sentence templates, one of which is
drawn ("" means the beat is skipped). Templates are filled
from a cast (hero, friend, grown-up with matching pronouns), a place, an object and a
few feelings. Articles are computed (`_a`), never written before a slot.

Story i of seed s is drawn from its own `random.Random(f"...:{s}:{i}")`, so it does not
depend on which stories were generated before it.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Iterator

from tinygemma.errors import TinyGemmaError
from tinygemma.fsutil import atomic_path

STORY_SEPARATOR = "<|endoftext|>\n"  # a line of its own between stories (after the previous story's "\n")
Beat = tuple[str, ...]
Paragraph = list[Beat]

# ---------------------------------------------------------------- the cast and the world
GIRLS = ("Lily Mia Emma Sara Lucy Anna Zoe Ella Rosa Amy Kate Nina Ruby Maya Sophie Chloe "
         "Grace Hannah Julia Lena Molly Ivy Jenny Clara Tara Leah Nora Eva Amira Priya Mei "
         "Aisha Sofia Wendy Polly Hazel Rita Susie Bella Elsa Lola Jade Alice Rose Kim Lucia Fatima Yuki Ada Iris").split()
BOYS = ("Tom Ben Max Sam Leo Jack Tim Finn Noah Luke Jake Oscar Theo Hugo Kai Omar Ravi Ken "
        "Dan Eli Adam Milo Owen Ryan Alex Jamal Leon Pablo Felix Toby Henry Mark Peter Billy "
        "Joe Nick Rex Ali Arlo Ian Carlos Sami Jonah Luca Marco Paul Ivan Tariq Hiro Zack").split()
PET_NAMES = ("Pip Spot Fluffy Coco Sunny Buddy Hoppy Whiskers Patch Button Pebble Dot Bubbles "
             "Nibbles Ziggy Biscuit Muffin Peanut Sparky Tiny Snowy Rusty Pudding Toffee Maple "
             "Bramble Poppy Clover Bobo Fuzzy Chip Honey Jelly Mossy Twig Sprout Cricket Pickles Waffles Goldie Acorn Blue Inky").split()
ANIMALS = ("cat dog bunny bird fox bear duck mouse frog puppy kitten owl pig lamb squirrel "
           "turtle elephant hedgehog penguin monkey lion giraffe goat chick deer otter panda "
           "koala raccoon hippo rabbit hamster zebra tiger kangaroo beaver seal badger mole robin "
           "parrot swan").split()
KID_ADJ = ("little", "little", "small", "young", "happy little", "sweet little")
ANIMAL_ADJ = ("little", "small", "fluffy", "tiny", "young", "brown", "gray", "friendly", "little")
TRAITS = ("brave", "helpful", "polite", "smart", "thoughtful", "caring", "silly", "energetic", "adventurous",
          "kind", "curious", "cheerful", "playful", "gentle", "clever", "friendly", "happy",
          "busy", "funny", "sweet", "lively")
GIVERS = ("grandma", "grandpa", "aunt", "uncle", "mom", "dad", "big sister", "big brother")
GROWNUPS = (("mom", "she"), ("mom", "she"), ("dad", "he"), ("dad", "he"),
            ("grandma", "she"), ("grandpa", "he"))

# (infinitive, gerund)
ACTIVITIES = (
    ("draw pictures", "drawing pictures"), ("sing songs", "singing songs"),
    ("run and jump", "running and jumping"), ("play with blocks", "playing with blocks"),
    ("read books", "reading books"), ("dance", "dancing"), ("splash in puddles", "splashing in puddles"),
    ("build things", "building things"), ("look at the stars", "looking at the stars"),
    ("play hide and seek", "playing hide and seek"), ("climb trees", "climbing trees"),
    ("pick flowers", "picking flowers"), ("chase butterflies", "chasing butterflies"),
    ("play in the sand", "playing in the sand"), ("paint with bright colors", "painting with bright colors"),
    ("tell funny jokes", "telling funny jokes"), ("count the clouds", "counting the clouds"),
    ("play ball", "playing ball"), ("help in the kitchen", "helping in the kitchen"),
    ("watch the birds", "watching the birds"), ("ride on the swings", "riding on the swings"),
    ("feed the ducks", "feeding the ducks"), ("play the piano", "playing the piano"),
    ("blow bubbles", "blowing bubbles"), ("make mud pies", "making mud pies"),
    ("fly paper planes", "flying paper planes"), ("play dress up", "playing dress up"),
    ("collect pretty leaves", "collecting pretty leaves"), ("jump on the bed", "jumping on the bed"),
)
# (name, "in the ..." phrase, plural details seen there)
PLACES = (
    ("the park", "in the park", ("tall trees", "big swings", "green hedges", "yellow ducks", "long benches")),
    ("the garden", "in the garden", ("bright flowers", "busy bees", "red tomatoes", "tall sunflowers", "little snails")),
    ("the forest", "in the forest", ("tall trees", "mossy logs", "tiny mushrooms", "singing birds", "big rocks")),
    ("the beach", "at the beach", ("sand dunes", "big waves", "pretty shells", "white birds", "little crabs")),
    ("the farm", "on the farm", ("happy cows", "fat pigs", "hay bales", "little chicks", "red apples")),
    ("the meadow", "in the meadow", ("wild flowers", "buzzing bees", "hopping rabbits", "white butterflies", "small bushes")),
    ("the playground", "at the playground", ("big slides", "red swings", "happy children", "sandboxes", "climbing bars")),
    ("the backyard", "in the backyard", ("green bushes", "pretty flowers", "old toys", "tall fences", "little birds")),
    ("the lake", "by the lake", ("little islands", "green frogs", "white swans", "smooth stones", "tall reeds")),
    ("the hill", "on the hill", ("big rocks", "little flowers", "big clouds", "grazing sheep", "old trees")),
    ("the river", "by the river", ("shiny fish", "round stones", "green frogs", "tall reeds", "little boats")),
    ("the orchard", "in the orchard", ("apple trees", "ripe pears", "buzzing bees", "wooden ladders", "fallen apples")),
    ("the pond", "by the pond", ("lily pads", "croaking frogs", "blue dragonflies", "tall cattails", "little fish")),
    ("the field", "in the field", ("hay bales", "red poppies", "field mice", "tall sunflowers", "old scarecrows")),
    ("the village square", "in the village square", ("busy shops", "flower pots", "old benches", "market stalls", "fat pigeons")),
    ("the woods", "in the woods", ("old trees", "fallen leaves", "little paths", "quiet birds", "soft ferns")),
)
OBJECT_ADJ = ("red", "blue", "green", "yellow", "purple", "orange", "pink", "white", "golden", "silver",
              "little", "shiny", "tiny", "striped", "spotted", "brown")
OBJECT_NOUNS = ("ball", "kite", "teddy bear", "toy train", "marble", "hat", "picture book", "toy boat",
                "crayon", "drum", "ribbon", "bell", "stuffed bunny", "scarf", "toy robot", "toy car",
                "blanket", "music box", "rubber duck", "paper crown", "toy horse", "doll", "bucket",
                "magic wand", "umbrella", "whistle", "yo-yo", "spinning top", "toy truck", "backpack")
SNACKS = ("big cookie", "juicy orange", "piece of cake", "sweet pear", "red apple",
          "warm muffin", "banana", "honey sandwich", "bag of grapes", "chocolate bar", "cupcake",
          "slice of watermelon", "peach", "cheese sandwich", "bowl of berries", "plum")
SPOTS = ("under a bush", "behind a big rock", "in the tall grass", "near the old tree",
         "under a pile of leaves", "next to the bench", "by the gate", "inside a hollow log",
         "under a big leaf", "behind the shed", "near the little pond", "in a flower bed",
         "behind a tree stump", "under a wooden bridge", "next to a sleeping cat")
JUNK = ("an old shoe", "a big stick", "a little bug", "some acorns", "a lost button",
        "a sleepy snail", "a shiny can", "an empty box", "a round pebble", "a bird feather",
        "a broken toy", "a tiny worm", "an acorn cap", "a piece of string")
GOOD = ("happy", "glad", "very happy", "so happy", "happy and proud", "full of joy", "delighted", "cheerful")
BAD = ("sad", "very sad", "upset", "worried", "so sad", "unhappy", "gloomy", "miserable")
DAYS = ("One day", "One day", "One morning", "One afternoon", "One sunny day", "One bright morning",
        "Early one morning", "One warm day", "One Saturday", "One spring day",
        "One fine morning", "One quiet afternoon", "One Sunday", "Last week")
WEATHER = ("The sun was shining and the sky was blue.", "The birds were singing in the trees.",
           "It was a warm and sunny day.", "A soft wind was blowing.",
           "There were fluffy white clouds in the sky.", "The air was fresh and cool.", "", "", "")


def _a(phrase: str) -> str:
    """'apple' -> 'an apple'; vowel sound by first letter (the word lists avoid exceptions)."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _pronouns(prefix: str, he: str) -> dict[str, str]:
    """he/him/his/himself and capitalised forms under `prefix`, e.g. f -> fhe, fHe, fhis."""
    him, his, self = ("him", "his", "himself") if he == "he" else ("her", "her", "herself")
    forms = {"he": he, "He": he.capitalize(), "him": him, "his": his, "His": his.capitalize(), "self": self}
    return {prefix + k: v for k, v in forms.items()}


def _character(rng: random.Random, prefix: str, avoid: str = "") -> dict[str, str]:
    """A child or a named animal: name, kind, 'a_kind' (with article) and pronouns."""
    if rng.random() < 0.55:
        girl = rng.random() < 0.5
        name = rng.choice(GIRLS if girl else BOYS)
        kind = "girl" if girl else "boy"
        a_kind = _a(f"{rng.choice(KID_ADJ)} {kind}")
        he = "she" if girl else "he"
    else:
        name, kind = rng.choice(PET_NAMES), rng.choice(ANIMALS)
        a_kind = _a(f"{rng.choice(ANIMAL_ADJ)} {kind}")
        he = rng.choice(("he", "she"))
    if name == avoid:
        return _character(rng, prefix, avoid)
    return {prefix + "name": name, prefix + "kind": kind, prefix + "a_kind": a_kind, **_pronouns(prefix, he)}


def _context(rng: random.Random) -> dict[str, str]:
    """Every slot a template may use: cast, grown-up, place, object, feelings, time."""
    hero = _character(rng, "")
    ctx = {**hero, **_character(rng, "f", avoid=hero["name"])}
    grownup, ghe = rng.choice(GROWNUPS)
    ctx.update(_pronouns("p", ghe), parent=grownup, Parent=grownup.capitalize())
    place, in_place, details = rng.choice(PLACES)
    d1, d2 = rng.sample(details, 2)
    act, acting = rng.choice(ACTIVITIES)
    s1, s2, s3 = rng.sample(SPOTS, 3)
    obj, snack = f"{rng.choice(OBJECT_ADJ)} {rng.choice(OBJECT_NOUNS)}", rng.choice(SNACKS)
    ctx.update(place=place, in_place=in_place, detail1=d1, detail2=d2, act=act, acting=acting,
               obj=obj, a_obj=_a(obj), snack=snack, a_snack=_a(snack), spot1=s1, spot2=s2, spot3=s3,
               junk=rng.choice(JUNK), giver=rng.choice(GIVERS), trait=rng.choice(TRAITS),
               a_trait=_a(rng.choice(TRAITS)), good=rng.choice(GOOD), bad=rng.choice(BAD),
               day=rng.choice(DAYS), weather=rng.choice(WEATHER))
    return ctx


# ---------------------------------------------------------------- story parts shared by plots
INTRO: Paragraph = [
    ("Once upon a time, there was {a_kind} named {name}.", "Once upon a time, there lived {a_kind} named {name}.",
     "There once was {a_kind} named {name}.", "Once upon a time, in a small village, there was {a_kind} named {name}.",
     "{name} was {a_kind} who lived in a cozy house near {place}.",
     "Once upon a time, {a_kind} named {name} lived near {place}."),
    ("{He} was {trait} and loved to {act}.", "{name} loved to {act} more than anything.",
     "{His} favorite thing to do was {acting}.", "Every day, {name} liked {acting}.",
     "{He} was {a_trait} {kind}, and {he} loved {acting}."),
    ("", "", "", "{He} had a big smile and a kind heart.", "Everyone who knew {name} liked {him}.",
     "{He} had bright eyes and a happy laugh.", "{He} always said please and thank you.",
     "{He} was always full of questions.", "{He} liked to laugh and play all day long."),
]
GLAD: Beat = ("{name} felt {good}.", "{name} smiled a big smile.", "{name} was {good}.", "")
WEATHER_BEAT: Beat = ("{weather}",)
FEEL_PLACE: Beat = ("", "", "", "A butterfly flew past {his} nose.", "The wind felt cool on {his} face.",
                    "{He} hummed a happy song as {he} walked.", "Everything looked bright and beautiful.")
SEE_PLACE: Beat = ("There were {detail1} and {detail2}.", "{He} saw {detail1} and {detail2}.",
                   "{He} looked at the {detail1} and the {detail2}.", "", "")

# ---------------------------------------------------------------- the plots
LOST: list[Paragraph] = [
    [*INTRO, ("{His} favorite toy was {a_obj}.", "{name} had {a_obj} that {his} {giver} gave {him}.",
              "{name} had {a_obj}. It was {his} favorite thing in the whole world."),
     ("{He} took it everywhere {he} went.", "{He} played with it every day.", "{He} even slept with it at night.", "")],
    [("{day}, {name} went to play {in_place} with {his} {obj}.", "{day}, {name} took {his} {obj} to {place}."),
     WEATHER_BEAT, SEE_PLACE, FEEL_PLACE,
     ("{He} played and played until it was time to go home.", "{He} played for a long time and had lots of fun."),
     ("But when {he} looked down, the {obj} was gone!", "Then {he} saw that {his} {obj} was not there anymore.",
      "When it was time to go home, {name} looked for {his} {obj}. It was gone!"),
     ("{name} felt {bad}.", "{name} was so sad that {he} began to cry.", "Tears filled {his} eyes.")],
    [("{His} friend {fname} came over and asked, \"Why are you sad, {name}?\"",
      "Just then, {fname} came by. \"What is wrong, {name}?\" {fhe} asked.",
      "{fname}, {fa_kind} who lived nearby, saw {name} and asked, \"What happened?\""),
     ("\"I lost my {obj},\" said {name}. \"I can't find it anywhere.\"",
      "{name} said, \"My {obj} is gone, and I don't know where it is.\"", "\"My {obj} is lost!\" cried {name}."),
     ("\"Don't worry,\" said {fname}. \"I will help you look for it.\"",
      "{fname} smiled and said, \"Let's look for it together.\"",
      "\"I will help you,\" said {fname}. \"Two friends can find anything!\"")],
    [("They looked {spot1}, but the {obj} was not there.", "First, they looked {spot1}. It was not there."),
     ("Then they looked {spot2}. It was not there either.", "Next, they checked {spot2}, but they only found {junk}.", ""),
     ("At last, {fname} looked {spot3} and shouted, \"I found it!\"", "Finally, {name} looked {spot3}, and there it was!",
      "Just then, a little dog ran up with the {obj} in its mouth. It had found it {spot3}!"),
     ("{name} hugged {his} {obj} and smiled.", "{name} was so happy! {He} held the {obj} close."),
     ("\"Thank you, {fname}!\" said {name}. \"You are a good friend.\"", "{name} said, \"Thank you for helping me, {fname}.\""),
     ("From that day on, {name} always kept {his} {obj} safe.", "After that, {name} was careful with {his} {obj} every day.", ""),
     ("{He} learned that good friends help each other.", "{name} learned that it is good to take care of the things you love.",
      "{name} and {fname} played together until the sun went down.")],
]
FRIEND: list[Paragraph] = [
    [*INTRO, ("But {name} did not have many friends.", "{name} was a bit shy, and {he} often played alone.",
              "Sometimes {name} felt lonely, because {he} had no one to play with.")],
    [("{day}, {name} went to {place}.", "{day}, {name} went for a walk to {place}."), WEATHER_BEAT, SEE_PLACE, FEEL_PLACE,
     ("There {he} saw {fa_kind} sitting all alone.", "There {he} saw {fa_kind} playing by {fself}.",
      "Near the {detail1}, {he} saw {fa_kind} who looked lonely too."),
     ("{name} wanted to say hello, but {he} felt shy.", "{name} felt a little shy, but {he} walked over slowly.")],
    [("\"Hello, I am {name},\" {he} said. \"What is your name?\"",
      "{name} took a deep breath and said, \"Hi! My name is {name}. Do you want to play with me?\""),
     ("\"My name is {fname},\" said the {fkind}. \"I would love to play!\"", "The {fkind} smiled. \"I am {fname}. Yes, let's play!\"",
      "\"I am {fname},\" the {fkind} said with a big smile. \"I am new here.\""),
     ("They played tag and laughed a lot.", "They sang songs and danced in a circle.",
      "They played hide and seek until they were tired.", "{name} showed {fname} how to {act}, and they had lots of fun.",
      "They told each other funny stories and giggled.")],
    [("When it was time to go home, {fname} asked, \"Can we play again tomorrow?\"",
      "When the sun went down, {fname} said, \"This was the best day! Will you come back tomorrow?\""),
     ("\"Yes!\" said {name}. \"You are my new friend.\"", "{name} nodded happily. \"Of course! See you tomorrow!\""),
     ("From that day on, {name} and {fname} were best friends.", "{name} was not lonely anymore.",
      "After that, they played together every day."),
     ("{name} learned that saying hello can make a new friend.", "Sometimes you just have to be brave and say hello.", "")],
]
FEARS = (  # (what, how it starts, the brave try, how it ends)
    ("the dark", "At night, when {his} {parent} turned off the light, {name} hid under the blanket.",
     "{name} peeked out and looked around the dark room. {He} saw {his} toys, {his} chair and the moon in the window.",
     "The dark was not scary at all. It was just the night, quiet and calm."),
    ("the big slide", "At the playground, the other children went down the big slide, but {name} stayed at the bottom.",
     "{name} climbed up the ladder, one step at a time. At the top, {he} held on tight, and then {he} let go.",
     "Whee! {He} slid all the way down and landed in the soft sand."),
    ("the water", "At the lake, the other children swam and splashed, but {name} stood on the shore.",
     "{name} walked into the water slowly, holding {his} {parent}'s hand. The water was cool and nice.",
     "Soon {he} was kicking and splashing and laughing with everyone else."),
    ("thunder", "One night, there was a big storm. There was a loud boom of thunder, and {name} jumped out of bed.",
     "{name} sat by the window and listened to the rain. When the thunder came again, {he} only counted, one, two, three.",
     "The storm was loud, but {he} was safe and warm inside."),
    ("the big dog next door", "Every time the big dog next door barked, {name} ran and hid behind {his} {parent}.",
     "{name} held out {his} hand, and the dog sniffed it. Then it wagged its tail and licked {his} fingers.",
     "The big dog was friendly after all!"),
    ("climbing the tall tree", "All the other children climbed the tall tree in the yard, but {name} stayed on the ground.",
     "{name} put {his} foot on the lowest branch. Then {he} reached for the next one, and the next one.",
     "Soon {he} was sitting high in the tree, looking at the whole town."),
    ("the doctor", "{name} had to go to the doctor, and {he} did not want to go.",
     "The doctor had a big smile and a funny tie. The doctor listened to {name}'s heart and gave {him} a sticker.",
     "Going to the doctor was not so bad after all!"),
    ("the big waves", "At the beach, the big waves crashed on the sand, and {name} ran away from them.",
     "{name} held {his} {parent}'s hand and stepped into the water. A little wave tickled {his} toes.",
     "Soon {he} was jumping over the small waves and laughing."),
    ("the first day of school", "{name} was going to a new school, and {his} tummy felt funny.",
     "{name} walked into the classroom. A kind teacher smiled at {him} and showed {him} a seat by the window.",
     "By lunch time, {name} had made two new friends."),
)
FEAR: list[Paragraph] = [
    [*INTRO, ("But {name} was scared of {fear}.", "There was just one thing {name} did not like: {fear}.",
              "{name} was brave about many things, but {he} was afraid of {fear}.")],
    [("{fear_start}",), ("\"I am scared of {fear},\" {name} told {his} {parent}.",
                         "\"I don't like {fear},\" {name} said in a small voice.")],
    [("{His} {parent} gave {him} a hug. \"It is okay to be scared,\" {phe} said. \"Being brave means trying, even when you are scared.\"",
      "\"I will be right here with you,\" said {his} {parent}. \"You can do it.\"",
      "{His} {parent} held {his} hand and said, \"Let's try together. I know you are brave.\""),
     ("{name} took a deep breath.", "{name} counted to three.", ""), ("{fear_try}",), ("{fear_done}",)],
    [("\"I did it!\" {name} shouted.", "\"I am not scared anymore!\" said {name}."),
     ("{His} {parent} smiled. \"I am so proud of you,\" {phe} said.", ""),
     ("{name} learned that being brave does not mean you are never scared. It means you try anyway.",
      "{name} felt brave and proud.", "After that day, {name} was never afraid of {fear} again.")],
]
SHARE: list[Paragraph] = [
    [*INTRO, ("{day}, {his} {giver} gave {him} {a_obj}.", "{day}, {name} got {a_obj} as a present."),
     ("{name} loved it very much.", "It was the best toy {he} had ever had.", "{He} could not stop smiling.")],
    [("{He} took the {obj} to {place} to play.", "{name} took {his} new {obj} to {place}."), SEE_PLACE,
     ("There {he} met {fname}, {fa_kind} from next door.", "There {he} saw {his} friend {fname}."),
     ("\"Wow, what a nice {obj}!\" said {fname}. \"Can I play with it too?\"",
      "{fname} looked at the {obj} and asked, \"May I have a turn, please?\""),
     ("But {name} held the {obj} tight. \"No, it is mine,\" {he} said.",
      "{name} did not want to share. \"It is mine!\" {he} said, and {he} turned away."),
     ("{fname} looked {bad} and walked away.", "{fname} sat down on the grass, looking {bad}.")],
    [("{name} played with the {obj} alone, but it was not much fun.", "Soon {name} did not feel happy anymore."),
     ("{He} thought about {fname}'s sad face.",
      "{He} remembered what {his} {parent} always said: \"Sharing makes everyone happy.\""),
     ("{name} walked over to {fname}. \"I am sorry,\" {he} said. \"Do you want to play with my {obj}?\"",
      "{name} went back to {fname} and held out the {obj}. \"Here, you can have a turn,\" {he} said."),
     ("{fname} smiled a big smile. \"Thank you, {name}!\"", "\"Yes, please!\" said {fname}, and {fhis} face lit up.")],
    [("They took turns with the {obj} all afternoon.", "They played with the {obj} together and laughed a lot."),
     ("Playing together was much more fun than playing alone.", ""),
     ("{name} learned that sharing makes playing more fun.", "{name} learned that when you share, everyone is happy.",
      "From that day on, {name} and {fname} always shared their toys.")],
]
PROBLEMS = (  # (what {name} sees, how {he} helps, the thanks)
    ("{He} saw a baby bird on the ground. It had fallen out of its nest and was calling for its mother.",
     "{name} picked up the little bird very gently. With help from {his} {parent}, {he} put it back in its nest high in the tree.",
     "The mother bird came back and sang a happy song, as if to say thank you."),
    ("{He} heard a small meow. A little kitten was stuck high up in a tree, and it could not get down.",
     "{name} ran to get {his} {parent}. {His} {parent} brought a ladder and carefully lifted the kitten down.",
     "The kitten purred and rubbed against {name}'s legs."),
    ("{He} saw an old man drop his bag. Red apples rolled all over the path.",
     "{name} ran over and picked up the apples, one by one, and put them back in the bag.",
     "\"Thank you, little one,\" said the old man. He gave {name} the shiniest apple."),
    ("{He} saw {his} friend {fname} fall down and hurt {fhis} knee. {fHe} began to cry.",
     "{name} sat down next to {fname} and held {fhis} hand. Then {he} helped {fhim} walk home, where {fhis} mom put a bandage on the knee.",
     "\"Thank you for helping me,\" said {fname} with a small smile."),
    ("{He} saw a little duckling all alone. It was crying because it could not find its mother.",
     "{name} walked with the duckling along the water, looking and looking. At last, they saw the mother duck and her other babies.",
     "The duckling quacked and swam to its mother. The mother duck nodded at {name}, as if to say thank you."),
    ("{He} saw an old woman carrying a heavy basket. She was walking very slowly.",
     "\"Can I help you?\" asked {name}. {He} held one side of the basket, and together they carried it all the way to her door.",
     "The old woman smiled and gave {name} a warm cookie. \"You have a kind heart,\" she said."),
    ("{He} saw a little puppy with its leg stuck in a fence. It was whining and could not get free.",
     "{name} held the fence apart very gently, and the puppy pulled its leg out.",
     "The puppy licked {name}'s face and wagged its tail."),
    ("{He} saw a little ladybug in a puddle. It was trying to get out, but it could not.",
     "{name} found a leaf and held it out. The ladybug climbed onto the leaf, and {name} put it down on the dry grass.",
     "The ladybug opened its red wings and flew away into the sunshine."),
)
HELP: list[Paragraph] = [
    [*INTRO, ("{He} always tried to be kind to others.",
              "{His} {parent} always said, \"A kind heart is the best thing to have.\"", "")],
    [("{day}, {name} was walking {in_place}.", "{day}, {name} went out to play {in_place}."), WEATHER_BEAT, SEE_PLACE, FEEL_PLACE,
     ("{problem}",)],
    [("{name} wanted to help.", "{name} knew {he} had to help.", "\"Oh no!\" said {name}. \"I must help.\""), ("{helping}",)],
    [("{thanks}",), ("{name} felt warm and happy inside.", "{name} smiled all the way home."),
     ("{name} learned that helping others makes your heart happy.", "Being kind to others is always the right thing to do.",
      "That evening, {name} told {his} {parent} all about it, and {phe} gave {him} a big hug.")],
]
TRIPS = (  # (place, things seen there)
    ("the zoo", ("tall giraffes", "big gray elephants", "noisy monkeys", "sleepy lions", "pink flamingos")),
    ("the beach", ("big blue waves", "white shells", "little crabs", "tall sand castles", "flying seagulls")),
    ("the farm", ("brown cows", "fluffy sheep", "little piglets", "red tractors", "big haystacks")),
    ("the mountains", ("tall pine trees", "cold streams", "snowy peaks", "wild goats", "big rocks")),
    ("the city", ("tall buildings", "busy buses", "big fountains", "bright lights", "many shops")),
    ("the big lake", ("white sails", "jumping fish", "quiet swans", "wooden docks", "green hills")),
)
TRAVEL = ("by car", "by train", "on a big bus", "on a little boat", "on their bikes")
TRIP: list[Paragraph] = [
    [*INTRO, ("{day}, {his} {parent} said, \"Today we are going to {trip}!\"",
              "{day}, {name} and {his} {parent} went on a trip to {trip}."),
     ("{name} was so excited that {he} jumped up and down.", "{name} could not wait.")],
    [("They went {travel}.", "They traveled {travel} for a long time."),
     ("{name} looked out and watched the trees go by.", "On the way, they sang songs together.", ""),
     ("When they got there, {name} saw {t1} and {t2}.", "At {trip}, there were {t1} and {t2}."),
     ("\"Look, {Parent}!\" said {name}. \"Look at the {t1}!\"", "\"Wow!\" said {name}. \"I love the {t2}!\"")],
    [("Then a big wind came and blew {name}'s hat away! {name} ran after it. The hat rolled and rolled until it "
      "stopped by a bush. {He} picked it up and laughed.",
      "After a while, {name}'s legs got tired. \"I can't walk anymore,\" {he} said. {His} {parent} picked {him} up "
      "and carried {him} on {phis} shoulders. From up there, {name} could see everything!",
      "Then dark clouds came, and it began to rain. {name} and {his} {parent} ran under a big tree to stay dry. "
      "Soon the rain stopped, and a bright rainbow came out in the sky.",
      "Soon, {name}'s tummy began to rumble. \"I am hungry,\" {he} said. {His} {parent} opened the bag and took out "
      "{a_snack}. They sat down and ate together.")],
    [("When the sun began to go down, it was time to go home.", "In the evening, they went back home."),
     ("{name} was tired but {good}.", "{name} was tired, but {he} could not stop smiling."),
     ("\"That was the best day ever,\" {he} said.", "That night, {name} dreamed about {trip}."),
     ("{He} could not wait to go back again.", "")],
]
MISTAKES = (  # (what happened, whose thing: parent "p" or friend "f", how they fix it)
    ("{day}, {name} was playing ball in the house, even though {his} {parent} had said not to. The ball hit "
     "{his} {parent}'s favorite vase, and it fell to the floor. Crash!", "p",
     "Together, they glued the pieces back together. The vase was not perfect, but it was still pretty."),
    ("{day}, {name} was carrying a cup of juice and ran too fast. The juice spilled all over the new rug.", "p",
     "Together, they cleaned the rug with soap and water until it looked like new."),
    ("{day}, {name} and {fname} were building a sand castle. {name} ran too fast and knocked it over.", "f",
     "Then {name} helped {fname} build a new sand castle, even bigger than before."),
    ("{day}, {name} borrowed {fname}'s {obj} without asking and lost it in the grass.", "f",
     "They looked for the {obj} together, and at last they found it {spot1}."),
    ("{day}, {name} ate the last cookie in the jar, even though it was for {his} {parent}.", "p",
     "Together, they baked a new batch of cookies, and {name} saved the biggest one for {his} {parent}."),
    ("{day}, {name} was grumpy and said something mean to {fname}.", "f",
     "Then they played together, and soon they were laughing again."),
    ("{day}, {name} was drawing and got paint all over {his} {parent}'s letter.", "p",
     "Together, they wrote a new letter, and {name} drew a flower on it to make it pretty."),
)
SORRY: list[Paragraph] = [
    INTRO,
    [("{mistake}",), ("{name} felt a cold feeling in {his} tummy.", "{name} froze. {He} did not know what to do."),
     ("{He} thought about hiding, so no one would know.", "For a moment, {he} wanted to run and hide.", "")],
    [("But {name} knew that telling the truth was the right thing to do.", "But hiding did not feel right."),
     ("{name} went to {victim}. \"I am sorry, {victim_a},\" {he} said. \"It was my fault.\"",
      "{name} walked up to {victim} and told {vhim} what happened. \"I am very sorry,\" {he} said."),
     ("{Victim} was quiet for a moment. Then {vhe} smiled. \"Thank you for telling me the truth,\" {vhe} said.",
      "{Victim} gave {name} a hug. \"Everyone makes mistakes,\" {vhe} said. \"I am glad you told me.\"")],
    [("{fix}",), ("{name} felt much better.", "After that, {name} felt light and happy again."),
     ("{name} learned that it is always best to tell the truth.", "{name} learned that saying sorry can make things right.", "")],
]
PROJECTS = (  # (the plan, how it goes, what goes wrong, the second try, the happy end)
    ("{name} wanted to make a card for {his} {parent}.",
     "{He} got paper, crayons and glue. {He} drew a big sun and a red heart.",
     "But then {he} spilled water on the card, and all the colors ran together.",
     "{name} got a new paper and drew everything again, even more carefully.",
     "{His} {parent} loved the card so much that {phe} put it on the fridge."),
    ("{name} wanted to bake a cake with {his} {parent}.",
     "They put flour, eggs, milk and sugar in a big bowl, and {name} stirred and stirred.",
     "But the first cake came out of the oven flat and burnt on top.",
     "They mixed a new cake, and this time {name} watched the clock very carefully.",
     "The new cake was tall and soft, and the whole family ate it together."),
    ("{name} woke up to find snow everywhere, and {he} wanted to build a big snowman.",
     "{He} rolled a big ball of snow for the body and a smaller one for the head.",
     "But every time {he} put the head on top, it fell off and broke.",
     "{fname} came to help. Together they packed the snow tight and pressed the head down hard.",
     "The snowman stood tall, with a carrot nose and two stones for eyes."),
    ("{name} wanted to build the tallest tower in the world.",
     "{He} put one block on top of another, higher and higher.",
     "But when the tower was very tall, it wobbled and fell down with a crash.",
     "{name} tried again. This time, {he} put the big blocks at the bottom and the small blocks on top.",
     "The new tower was the tallest one {name} had ever built."),
    ("{name} wanted to make a little house for the birds.",
     "{He} found some wood, a hammer and some nails, and {his} {parent} helped {him} hold the boards.",
     "But the roof was too small, and it slid off.",
     "{name} measured the roof again and cut a bigger piece.",
     "Soon two little birds moved into the house and sang every morning."),
)
MAKE: list[Paragraph] = [
    INTRO,
    [("{day}, {plan}", "{plan}"), ("{steps}",)],
    [("{oops}",), ("\"Oh no!\" cried {name}.", "\"It is ruined!\" said {name}.", "{name} felt like crying."),
     ("{His} {parent} said, \"Don't give up. Try again, and you will do it.\"",
      "\"Mistakes help us learn,\" said {his} {parent}. \"Let's try one more time.\"",
      "{name} wanted to stop, but then {he} said to {self}, \"I can do this.\"")],
    [("{retry}",), ("{success}",), GLAD,
     ("{name} learned that if something goes wrong, you can always try again.", "{name} learned to never give up.", "")],
]
SKILLS = (  # (skill, a failed try, the success)
    ("ride a bike", "{He} got on the bike and pushed the pedals, but the bike wobbled and {he} fell over.",
     "{He} pedaled and pedaled, and the bike went straight down the path!"),
    ("tie {his} shoes", "{He} made a loop, but the laces slipped out of {his} fingers.",
     "{He} made a loop, wrapped the other lace around it and pulled. It was a perfect bow!"),
    ("whistle", "{He} pushed out {his} lips and blew, but only air came out.",
     "{He} blew softly, and a clear little whistle came out!"),
    ("jump rope", "{He} swung the rope, but it caught on {his} feet every time.",
     "{He} swung the rope and jumped, once, twice, ten times in a row!"),
    ("fly a kite", "{He} ran with the kite, but it bumped on the ground and would not go up.",
     "{He} ran into the wind and let the string go little by little. The kite rose high into the sky!"),
    ("swim", "{He} jumped into the water, but {he} sank and came up coughing.",
     "{He} kicked {his} legs and moved {his} arms, and {he} swam all the way across the pool!"),
    ("count to one hundred", "{He} started to count, but after twenty {he} always forgot what came next.",
     "{He} counted all the way to one hundred without a single mistake!"),
    ("read a whole book", "{He} opened the book, but the words were long and hard.",
     "{He} read the whole book, page by page, all by {self}!"),
)
LEARN: list[Paragraph] = [
    INTRO,
    [("{day}, {name} decided that {he} wanted to learn to {skill}.", "{day}, {name} saw {fname} {skill}, and {he} wanted to learn too."),
     ("\"Can you teach me to {skill}?\" {he} asked {his} {parent}.", "{He} asked {his} {parent} to help {him}."),
     ("\"Of course,\" said {his} {parent}.", "{His} {parent} smiled and said yes.")],
    [("{fail}",), ("\"I can't do it!\" said {name}. {He} felt {bad}.", "{name} felt {bad}. It was harder than {he} thought."),
     ("{His} {parent} said, \"Everyone needs practice. Let's try again tomorrow.\"",
      "\"Keep trying,\" said {his} {parent}. \"Every try makes you better.\""),
     ("Every day, {name} practiced.", "So {name} tried again, and again, and again.")],
    [("Then, one day, it happened.", "After many days, something wonderful happened."), ("{win}",),
     ("\"I did it!\" shouted {name}.", "\"Look at me!\" {name} called."), ("{His} {parent} clapped and cheered.", ""),
     ("{name} learned that practice helps you learn new things.", "{name} was proud, because {he} had not given up.")],
]
GROW: list[Paragraph] = [
    INTRO,
    [("{day}, {his} {parent} gave {name} a little seed. \"If you take care of it, it will grow,\" {phe} said.",
      "{day}, {his} {parent} gave {name} a little seed.", "{day}, {name} found a little seed {in_place}."),
     ("{name} planted the seed in a pot of soil and put it by the window.", "{name} planted the seed in the garden and patted the soil.")],
    [("Every day, {name} gave the seed some water.", "Every morning, {name} watered the seed and said, \"Good morning, little seed!\""),
     ("But nothing happened.", "But the soil stayed brown and bare."),
     ("\"Why is it not growing?\" asked {name}.", "\"Will it ever grow?\" {name} asked {his} {parent}."),
     ("\"Be patient,\" said {his} {parent}. \"Good things take time.\"", "{His} {parent} smiled. \"Just wait and see,\" {phe} said.")],
    [("{name} waited and waited.", "Days went by, and {name} kept watering."),
     ("Then one morning, {he} saw a tiny green leaf poking out of the soil!",),
     ("Day by day, the plant grew taller, and soon it had a big {color} flower.",), GLAD,
     ("{name} learned that good things come to those who wait.", "{name} learned that taking care of something helps it grow.")],
]
GIFTS = (  # (the idea, making it, giving it)
    ("pick the prettiest flowers {in_place}", "{He} found red ones, yellow ones and white ones, and tied them with a ribbon.",
     "{name} gave {whom} the flowers."),
    ("draw a picture of the two of them", "{He} drew two smiling faces under a big yellow sun, and {he} colored it very carefully.",
     "{name} gave {whom} the picture."),
    ("sing a special song", "{He} practiced the song again and again, until {he} knew every word.",
     "{name} sang the song for {whom}."),
    ("make a paper crown", "{He} cut the paper, glued on shiny stickers and drew stars all around it.",
     "{name} put the crown on {whom}'s head."),
    ("collect the shiniest stones {in_place}", "{He} washed the stones and put them in a little box.",
     "{name} gave {whom} the box of stones."),
)
SURPRISE: list[Paragraph] = [
    INTRO,
    [("{day}, {name} remembered that it was {whom}'s birthday.", "{day}, {name} found out that tomorrow was {whom}'s birthday."),
     ("{He} wanted to give {whom} a surprise.", "{name} wanted to make {whom} very happy."),
     ("But {he} did not have any money to buy a present.", "But what could {he} give?")],
    [("{name} thought and thought.", "{name} sat down and thought very hard."),
     ("Then {he} had an idea! {He} would {idea}.",), ("{making}",),
     ("{He} hid it so it would be a surprise.", "{He} kept it a secret the whole day.", "")],
    [("{giving} \"Happy birthday!\" {he} said.",), ("{Whom} was so surprised!", "{Whom}'s eyes grew big.", ""),
     ("\"This is the best present ever,\" said {whom}, and {whe} gave {name} a big hug.",
      "\"Thank you, {name}. I love it!\" said {whom}."),
     ("{name} learned that the best presents come from the heart.",
      "{name} felt warm inside. Giving made {him} just as happy as getting.", "")],
]
RAINY: list[Paragraph] = [
    INTRO,
    [("{day}, {name} wanted to go out and play {in_place}.", "{day}, {name} woke up and wanted to go to {place}."),
     ("But when {he} looked out the window, it was raining.", "But it was raining hard, and the sky was dark and gray."),
     ("\"I can't go outside,\" said {name}. \"This is the worst day.\"", "{name} pressed {his} nose to the window and sighed."),
     ("{He} felt {bad}.", "")],
    [("Then {his} {parent} had an idea.", "Just then, {his} {parent} came in with a smile."),
     ("\"Let's build a fort!\" {phe} said. They put blankets over two chairs and crawled inside with a flashlight.",
      "\"Let's have a picnic on the floor!\" {phe} said. They put a blanket on the floor and ate sandwiches and fruit.",
      "\"Let's make music!\" {phe} said. They banged on pots and pans and sang loud songs.",
      "\"Let's bake some bread!\" {phe} said. They mixed and kneaded, and soon the house smelled warm and sweet.",
      "\"Let's put on a puppet show!\" {phe} said. They made puppets out of old socks and told a funny story."),
     ("{name} laughed and laughed.", "{name} forgot all about the rain.", "It was so much fun!")],
    [("When the rain stopped, the sun came out.", "Later, the rain stopped and the clouds went away."),
     ("{name} ran outside and jumped in the big puddles. Splash!", "There was a big rainbow in the sky.",
      "{name} put on {his} boots and went out to splash in the puddles."),
     ("{name} learned that a rainy day can be a happy day too.", "{name} learned that you can have fun on any day.", "")],
]
RACE: list[Paragraph] = [
    INTRO,
    [("{day}, there was a big race {in_place}.", "{day}, all the children and animals met {in_place} for a race."),
     ("{name} and {fname} both wanted to win.", "{name} wanted to win more than anything."),
     ("\"Ready, set, go!\" shouted {his} {parent}.", "\"One, two, three, go!\" called an old owl.")],
    [("{name} ran as fast as {he} could.", "{name} ran and ran, and soon {he} was in front."),
     ("Then {he} heard a cry behind {him}.", "Then {he} looked back."),
     ("{His} friend {fname} had tripped over a root and fallen down.",
      "{His} friend {fname} had slipped in the mud and hurt {fhis} leg."),
     ("{He} could win the race, but {his} friend needed help.", "{name} stopped. {His} friend needed help."),
     ("{name} ran back and helped {fname} up.", "{name} turned around and helped {fname} stand up.")],
    [("They walked to the finish line together, side by side.", "They crossed the finish line together, holding hands."),
     ("They did not win the race, but everyone clapped and cheered for them.",
      "They came last, but everyone cheered the loudest for them."),
     ("\"Thank you for helping me,\" said {fname}.", "\"You are a true friend,\" said {fname}."),
     ("{name} learned that helping a friend is better than winning.",
      "{name} felt proud. Being kind was better than being first.", "")],
]
TIDY: list[Paragraph] = [
    [*INTRO, ("{name} had lots of toys, but {he} never put them away.", "{name}'s room was always a big mess.")],
    [("{day}, {his} {parent} said, \"{name}, please clean up your room.\"",
      "{day}, {his} {parent} looked at the messy room and said, \"It is time to tidy up.\""),
     ("\"But I want to play!\" said {name}.", "\"Cleaning is boring,\" said {name} with a frown."),
     ("{He} did not clean up. {He} went to play instead.", "So {name} pushed the toys under the bed and went out to play.")],
    [("That night, {name} wanted {his} {obj}, but {he} could not find it in the mess.",
      "Later, {name} stepped on a toy block. \"Ouch!\" {he} cried."),
     ("{name} looked at all the toys on the floor.", ""),
     ("Maybe cleaning was a good idea after all.", "{He} knew {his} {parent} was right.")],
    [("{name} made it a game.", "{name} put on some music and began."),
     ("{He} put the books on the shelf, the cars in the box and the clothes in the basket.",
      "{He} sang a song while {he} picked up every block and every doll."),
     ("{He} even found {his} {obj} under a pile of clothes!", ""),
     ("Soon the room was clean and tidy.", "In no time, the floor was clean."),
     ("{His} {parent} came in and smiled. \"What a clean room!\" {phe} said.", ""),
     ("{name} learned that a tidy room makes everything easier.", "{name} learned that cleaning up can be fun too.", "")],
]
BEDTIME: list[Paragraph] = [
    INTRO,
    [("One night, {name} could not sleep.", "It was late at night, but {name} was wide awake."),
     ("{He} tossed and turned in {his} bed.", "{He} looked at the ceiling and sighed."),
     ("{He} got up and looked out the window.",),
     ("The moon was big and round, and the sky was full of stars.", "A silver moon was shining in the dark sky.")],
    [("{His} {parent} came in quietly. \"Why are you still awake?\" {phe} asked.",),
     ("\"I can't sleep,\" said {name}. \"My head is full of thoughts.\"", "\"I am not sleepy at all,\" said {name}."),
     ("{His} {parent} sat on the bed. \"Let's count the stars together,\" {phe} said.",
      "{His} {parent} tucked {him} in and sang a soft song about the moon.")],
    [("Soon {name}'s eyes felt heavy.", "Before long, {name} began to yawn."),
     ("{He} closed {his} eyes and dreamed of flying up to the moon.", "{He} fell asleep with a smile on {his} face."),
     ("Good night, {name}.", "")],
]
FLOWER_COLORS = ("red", "yellow", "pink", "purple", "orange", "white", "blue")


# ---------------------------------------------------------------- plot-specific slots
def _fill(ctx: dict[str, str], **templates: str) -> None:
    """Fill plot-specific templates from `ctx` and add them to it as new slots."""
    ctx.update({k: v.format_map(ctx) for k, v in templates.items()})


def _setup_fear(rng: random.Random, ctx: dict[str, str]) -> None:
    fear, start, attempt, done = rng.choice(FEARS)
    _fill(ctx, fear=fear, fear_start=start, fear_try=attempt, fear_done=done)


def _setup_help(rng: random.Random, ctx: dict[str, str]) -> None:
    problem, helping, thanks = rng.choice(PROBLEMS)
    _fill(ctx, problem=problem, helping=helping, thanks=thanks)


def _setup_trip(rng: random.Random, ctx: dict[str, str]) -> None:
    trip, things = rng.choice(TRIPS)
    t1, t2 = rng.sample(things, 2)
    ctx.update(trip=trip, travel=rng.choice(TRAVEL), t1=t1, t2=t2)


def _setup_sorry(rng: random.Random, ctx: dict[str, str]) -> None:
    mistake, whose, fix = rng.choice(MISTAKES)
    if whose == "p":  # the grown-up is addressed as "Mom", spoken of as "her mom"
        victim = {"victim": "{his} {parent}", "Victim": "{His} {parent}", "victim_a": ctx["Parent"]}
    else:
        victim = {"victim": ctx["fname"], "Victim": ctx["fname"], "victim_a": ctx["fname"]}
    ctx.update(vhe=ctx[whose + "he"], vhim=ctx[whose + "him"])
    _fill(ctx, mistake=mistake, fix=fix, **victim)


def _setup_make(rng: random.Random, ctx: dict[str, str]) -> None:
    plan, steps, oops, retry, success = rng.choice(PROJECTS)
    _fill(ctx, plan=plan, steps=steps, oops=oops, retry=retry, success=success)


def _setup_learn(rng: random.Random, ctx: dict[str, str]) -> None:
    skill, fail, win = rng.choice(SKILLS)
    _fill(ctx, skill=skill, fail=fail, win=win)


def _setup_grow(rng: random.Random, ctx: dict[str, str]) -> None:
    ctx["color"] = rng.choice(FLOWER_COLORS)


def _setup_surprise(rng: random.Random, ctx: dict[str, str]) -> None:
    idea, making, giving = rng.choice(GIFTS)
    who = rng.choice("pf")  # a birthday of the grown-up ("her mom") or of the friend ("Ben")
    whom = "{his} {parent}" if who == "p" else ctx["fname"]
    ctx["whe"] = ctx[who + "he"]
    _fill(ctx, whom=whom, Whom="{His} {parent}" if who == "p" else whom)
    _fill(ctx, idea=idea, making=making, giving=giving)


def _no_setup(rng: random.Random, ctx: dict[str, str]) -> None:
    pass


CLOSE: Beat = ("", "", "", "", "", "It was a very good day.", "That night, {name} went to sleep with a big smile.",
               "{name} would always remember that day.", "It was a day {name} would never forget.",
               "{name} hoped that tomorrow would be just as good.", "It was a happy day for everyone.")


def _with_close(plot: list[Paragraph]) -> list[Paragraph]:
    """The plot with an optional closing line after its last paragraph."""
    return [*plot[:-1], [*plot[-1], CLOSE]]


PLOTS = (
    (_with_close(LOST), _no_setup), (_with_close(FRIEND), _no_setup), (_with_close(FEAR), _setup_fear),
    (_with_close(SHARE), _no_setup), (_with_close(HELP), _setup_help), (_with_close(TRIP), _setup_trip),
    (_with_close(SORRY), _setup_sorry), (_with_close(MAKE), _setup_make), (_with_close(LEARN), _setup_learn),
    (_with_close(GROW), _setup_grow), (_with_close(SURPRISE), _setup_surprise), (_with_close(RAINY), _no_setup),
    (_with_close(RACE), _no_setup), (_with_close(TIDY), _no_setup), (BEDTIME, _no_setup),  # bedtime ends asleep
)


# ---------------------------------------------------------------- public API
def story(index: int, seed: int = 0) -> str:
    """Story number `index` of the stream for `seed`; paragraphs are separated by a blank line."""
    rng = random.Random(f"tinygemma-corpus:{seed}:{index}")
    ctx = _context(rng)
    paragraphs, setup = rng.choice(PLOTS)
    setup(rng, ctx)
    out = []
    for paragraph in paragraphs:
        sentences = (t.format_map(ctx) for t in map(rng.choice, paragraph))
        out.append(" ".join(s for s in sentences if s))  # "" = a skipped beat
    return "\n\n".join(out)


def iter_stories(seed: int = 0, start: int = 0) -> Iterator[str]:
    """An endless, deterministic stream of stories: story(start), story(start + 1), ..."""
    return (story(i, seed) for i in itertools.count(start))


def stories(n: int, seed: int = 0) -> list[str]:
    """The first `n` stories for `seed`."""
    return [story(i, seed) for i in range(n)]


def write_corpus(path: str | Path, n_bytes: int, seed: int = 0) -> int:
    """Write stories separated by `<|endoftext|>` lines, up to `n_bytes` bytes; return the number of stories.

    Streams to a temporary file that is renamed at the end, so memory stays bounded and a
    crash leaves no partial file. The file never exceeds `n_bytes`, except that at least one
    story is always written.
    """
    if n_bytes <= 0:
        raise TinyGemmaError(f"corpus size must be positive, got {n_bytes} bytes: pass a size such as 20_000_000")
    written, count = 0, 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="ascii", newline="\n") as f:
        for text in iter_stories(seed):
            chunk = (STORY_SEPARATOR if count else "") + text + "\n"
            if count and written + len(chunk) > n_bytes:
                break
            f.write(chunk)
            written, count = written + len(chunk), count + 1
    return count
