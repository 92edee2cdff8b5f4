"""Built-in calibration texts for static int8 quantisation (openvino-int8): short queries and web-style passages.

Written for this project (free to use). Static quantisation fixes each layer's activation range from these inputs,
so they mimic what a search engine sees: keyword queries, questions, and passages of one to four sentences.
"""

from __future__ import annotations

QUERIES = [
    "how many people live in berlin",
    "what is the boiling point of water at altitude",
    "symptoms of vitamin d deficiency",
    "who wrote the first computer program",
    "average salary of a nurse in texas",
    "how long to bake chicken thighs at 400",
    "definition of photosynthesis",
    "when did the roman empire fall",
    "best way to learn a second language",
    "what causes the northern lights",
    "how does a mortgage interest rate work",
    "is coffee bad for your heart",
    "difference between a virus and a bacterium",
    "what is the capital of australia",
    "how to reset a wifi router",
    "why is the sky blue",
    "largest river in south america",
    "how many calories in a banana",
    "what does a civil engineer do",
    "treatment for a sprained ankle",
    "meaning of the word ubiquitous",
    "how far is the moon from earth",
    "what is machine learning used for",
    "cost of living in lisbon compared to london",
]

PASSAGES = [
    "Berlin is the capital and largest city of Germany, with about 3.8 million inhabitants within its city limits. "
    "The wider metropolitan region is home to more than six million people.",
    "At higher altitudes the air pressure is lower, so water boils at a lower temperature. In Denver, about 1,600 "
    "metres above sea level, water boils at roughly 95 degrees Celsius.",
    "Vitamin D deficiency can cause fatigue, bone pain, muscle weakness and mood changes. Severe deficiency leads to "
    "rickets in children and osteomalacia in adults. Sunlight and fortified foods are the main sources.",
    "Ada Lovelace is often described as the first computer programmer. In 1843 she published an algorithm for "
    "Charles Babbage's proposed Analytical Engine to compute Bernoulli numbers.",
    "Registered nurses in Texas earn an average of around 80,000 dollars a year, although pay varies widely by city, "
    "specialty and experience. Nurses in large hospitals in Houston and Dallas tend to earn more.",
    "Bake bone-in chicken thighs at 400 degrees Fahrenheit for 35 to 45 minutes, until the internal temperature "
    "reaches 165 degrees. Boneless thighs need about 20 to 25 minutes.",
    "Photosynthesis is the process by which green plants, algae and some bacteria use light energy to turn carbon "
    "dioxide and water into glucose and oxygen. It takes place mainly in the chloroplasts of leaf cells.",
    "The Western Roman Empire is usually said to have fallen in 476 AD, when the Germanic leader Odoacer deposed the "
    "emperor Romulus Augustulus. The Eastern Roman Empire survived until 1453.",
    "Regular practice, listening to native speakers and speaking from the first week are the most effective ways to "
    "learn a new language. Short daily sessions work better than long weekly ones.",
    "The aurora borealis appears when charged particles from the sun collide with gases in the upper atmosphere. "
    "Oxygen gives off green and red light, nitrogen blue and purple.",
    "A mortgage interest rate is the cost of borrowing money to buy a home, expressed as a yearly percentage. A "
    "fixed rate stays the same for the whole term; a variable rate follows a reference rate set by the market.",
    "Moderate coffee consumption, about three to four cups a day, is not linked to a higher risk of heart disease in "
    "most healthy adults, and some studies associate it with a slightly lower risk.",
    "Bacteria are single-celled organisms that can live on their own, while viruses are much smaller and can only "
    "reproduce inside the cells of a host. Antibiotics work against bacteria but not against viruses.",
    "Canberra is the capital city of Australia. It was chosen in 1908 as a compromise between Sydney and Melbourne, "
    "the two largest cities.",
    "To reset most routers, hold the small reset button on the back for about ten seconds until the lights flash. "
    "This restores the factory settings, including the default network name and password.",
    "Sunlight is scattered by the molecules in the air, and shorter blue wavelengths are scattered much more than red "
    "ones. This effect, called Rayleigh scattering, makes the sky look blue during the day.",
    "The Amazon is the largest river in South America and carries more water than any other river in the world. It "
    "flows about 6,400 kilometres from the Andes to the Atlantic Ocean.",
    "A medium banana contains about 105 calories, 27 grams of carbohydrates, 3 grams of fibre and a good amount of "
    "potassium and vitamin B6.",
    "Civil engineers design, build and maintain infrastructure such as roads, bridges, tunnels, dams and water "
    "supply systems. They work for government agencies, construction firms and consulting companies.",
    "Most sprained ankles heal with rest, ice, compression and elevation in the first two days. Gentle movement and "
    "balance exercises afterwards help prevent the injury from happening again.",
    "Ubiquitous means present, appearing or found everywhere. For example: mobile phones have become ubiquitous in "
    "modern life.",
    "The average distance between the Earth and the Moon is about 384,400 kilometres. Light covers it in a little "
    "more than one second.",
    "Machine learning is used for spam filtering, product recommendations, speech recognition, fraud detection, "
    "medical image analysis and ranking search results.",
    "Rents in Lisbon are roughly half of those in central London, and eating out costs about 40 percent less. "
    "Salaries are also considerably lower, so the difference in purchasing power is smaller than it seems.",
    "See our frequently asked questions to learn how our service works. Contact support by email or phone from "
    "Monday to Friday, 9 am to 5 pm.",
    "Table of contents: 1. Introduction 2. Installation 3. Configuration 4. Troubleshooting 5. Appendix; "
    "version 2.4.1, last updated March 2019.",
]


def calibration_texts() -> list[str]:
    """Queries and passages interleaved, so every calibration batch sees both lengths."""
    out: list[str] = []
    for query, passage in zip(QUERIES, PASSAGES):
        out += [query, passage]
    return out + PASSAGES[len(QUERIES) :]


def calibration_pairs() -> list[tuple[str, str]]:
    """(query, passage) pairs for a cross-encoder: each query with its own passage and with an unrelated one."""
    n = len(QUERIES)
    return [(q, PASSAGES[i]) for i, q in enumerate(QUERIES)] + [
        (q, PASSAGES[(i + 7) % n]) for i, q in enumerate(QUERIES)
    ]
