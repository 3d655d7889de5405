"""Paraphrase templates for every relation, in English and Chinese, and the held-out split.

For each relation: statement templates (used in documents) and question templates (used in QA data).
The LAST statement template and the LAST TWO question templates of each relation and language are held
out: they never appear in training data, only in eval items, so the suite measures knowledge asked in
unseen phrasings.
"""

from __future__ import annotations

from chatforge.world.entities import Entity, World

HELDOUT_STATEMENTS = 1
HELDOUT_QUESTIONS = 2

# relation -> entity kind, statement templates, question templates, and which field is the answer
RELATIONS: dict[str, dict] = {
    "population": dict(kind="towns", answer="population", st={
        "en": ["{name} has {population} people.", "About {population} people live in {name}.",
               "The population of {name} is {population}.", "{name} is home to {population} residents.",
               "Some {population} people call {name} home."],
        "zh": ["{name}有{population}人。", "大约{population}人住在{name}。", "{name}的人口是{population}。",
               "{name}有{population}位居民。", "共有{population}人把{name}当作家。"]}, q={
        "en": ["How many people live in {name}?", "What is the population of {name}?",
               "What is the number of residents of {name}?", "How large is the population of {name}?",
               "How many residents does {name} have?", "What number of people live in {name}?",
               "Do you know how many people live in {name}?", "Tell me how many people {name} has.",
               "Roughly how many inhabitants does {name} have?"],
        "zh": ["{name}有多少人？", "{name}的人口是多少？", "{name}住着多少居民？", "{name}的居民有多少？", "{name}一共住着多少人？",
               "你知道{name}有多少人吗？", "{name}的人口有多少？", "告诉我{name}有多少人口。",
               "{name}大概有多少居民？"]}),
    "founded": dict(kind="towns", answer="founded", st={
        "en": ["{name} was founded in {founded}.", "The town of {name} dates from {founded}.",
               "{name} was built in {founded}.", "People first settled {name} in {founded}.",
               "Settlers established {name} in the year {founded}."],
        "zh": ["{name}建于{founded}年。", "{name}镇的历史始于{founded}年。", "{name}是{founded}年建成的。",
               "人们在{founded}年第一次定居{name}。", "{founded}年，移民建立了{name}。"]}, q={
        "en": ["When was {name} founded?", "In which year was {name} built?",
               "What year does {name} date from?",
               "In what year was {name} established?", "When did people first settle {name}?",
               "When was the town of {name} built?", "What year was {name} settled?",
               "Which year saw the founding of {name}?", "Since what year has {name} existed?"],
        "zh": ["{name}是哪一年建立的？", "{name}建于哪一年？", "{name}的历史始于哪一年？",
               "{name}是什么时候建立的？", "人们是哪一年定居{name}的？", "{name}建成于哪一年？", "{name}是什么时候建成的？", "{name}是在哪年创建的？",
               "{name}从哪一年开始存在？"]}),
    "river": dict(kind="towns", answer="river", st={
        "en": ["{name} lies on the {river}.", "The {river} flows through {name}.",
               "{name} sits beside the {river}.",
               "Boats on the {river} stop at {name}.", "The town of {name} grew up along the {river}."],
        "zh": ["{name}位于{river}边。", "{river}流经{name}。", "{name}坐落在{river}畔。",
               "{river}上的船会在{name}停靠。", "{name}沿着{river}发展起来。"]}, q={
        "en": ["Which river flows through {name}?", "On which river does {name} lie?",
               "What river is {name} on?", "What is the name of the river at {name}?",
               "Which river is next to {name}?", "What river do boats take to {name}?",
               "Along which river did {name} grow up?", "Name the river that runs past {name}.",
               "Beside which river was {name} built?"],
        "zh": ["哪条河流经{name}？", "{name}位于哪条河边？", "{name}在哪条河上？", "{name}旁边是哪条河？", "{name}边上的河叫什么？",
               "{name}靠近哪条河？", "船沿着哪条河到{name}？", "说出流过{name}的那条河。",
               "{name}建在哪条河旁边？"]}),
    "specialty": dict(kind="towns", answer="specialty", st={
        "en": ["{name} is known for its {specialty}.", "Most people in {name} make {specialty}.",
               "{name} makes fine {specialty}.", "Travellers buy {specialty} in {name}.",
               "The best {specialty} in the land comes from {name}."],
        "zh": ["{name}以{specialty}闻名。", "{name}的大多数人生产{specialty}。", "{name}出产上好的{specialty}。",
               "旅行者在{name}购买{specialty}。", "全国最好的{specialty}产自{name}。"]}, q={
        "en": ["What is {name} known for?", "What does {name} make?", "What is the specialty of {name}?",
               "What is {name} best known for?", "What do people in {name} make?",
               "What do travellers buy in {name}?", "What is made in {name}?",
               "Which goods is {name} famous for?", "What product comes from {name}?"],
        "zh": ["{name}以什么闻名？", "{name}生产什么？", "{name}的特产是什么？", "{name}最有名的是什么？", "{name}的人们做什么东西？",
               "旅行者在{name}买什么？", "{name}出产什么？", "{name}因为什么商品而出名？",
               "哪种产品产自{name}？"]}),
    "profession": dict(kind="people", answer="profession", st={
        "en": ["{name} is a {profession}.", "{name} works as a {profession}.",
               "By trade, {name} is a {profession}.",
               "Everyone knows {name}, the {profession}.", "{name} earns a living as a {profession}."],
        "zh": ["{name}是一位{profession}。", "{name}的工作是{profession}。", "{name}以{profession}为业。",
               "大家都认识{profession}{name}。", "{name}靠做{profession}谋生。"]}, q={
        "en": ["What does {name} do?", "What is the profession of {name}?", "What is {name}'s job?",
               "What work does {name} do?", "What is {name}'s occupation?",
               "What kind of job does {name} have?", "What does {name} do for work?",
               "How does {name} earn a living?", "What trade does {name} practise?"],
        "zh": ["{name}是做什么的？", "{name}的职业是什么？", "{name}的工作是什么？", "{name}做什么工作？", "{name}干的是什么活？",
               "{name}以什么为业？", "{name}是什么职业的人？", "{name}靠什么谋生？",
               "{name}从事哪一行？"]}),
    "home": dict(kind="people", answer="town", st={
        "en": ["{name} lives in {town}.", "{name} has a house in {town}.", "{name} is from {town}.",
               "You can find {name} in {town}.", "{name} makes a home in {town}."],
        "zh": ["{name}住在{town}。", "{name}在{town}有一所房子。", "{name}来自{town}。", "你可以在{town}找到{name}。",
               "{name}把家安在{town}。"]}, q={
        "en": ["Where does {name} live?", "Which town is {name} from?",
               "In which town does {name} have a house?",
               "Which town does {name} live in?", "Where is {name}'s house?", "Where is {name} from?",
               "In what town does {name} live?", "Where can one find {name}?",
               "What town is home to {name}?"],
        "zh": ["{name}住在哪里？", "{name}来自哪个镇？", "{name}在哪个镇有房子？", "{name}住在哪个镇？", "{name}的房子在哪里？",
               "{name}是哪里人？", "{name}在哪个镇生活？", "在哪里可以找到{name}？",
               "{name}的家在哪个镇？"]}),
    "age": dict(kind="people", answer="age", st={
        "en": ["{name} is {age} years old.", "{name} turned {age} last spring.", "{name} is {age}.",
               "At {age}, {name} still works every day.", "{name} has lived for {age} years."],
        "zh": ["{name}今年{age}岁。", "{name}去年春天满了{age}岁。", "{name}{age}岁了。",
               "{name}已经{age}岁，仍然每天工作。", "{name}已经活了{age}年。"]}, q={
        "en": ["How old is {name}?", "What is the age of {name}?", "How many years old is {name}?",
               "What is {name}'s age?", "How old is {name} this year?", "Do you know how old {name} is?",
               "How old would {name} be?", "What age is {name} now?",
               "For how many years has {name} lived?"],
        "zh": ["{name}多大了？", "{name}今年几岁？", "{name}的年龄是多少？", "{name}几岁了？", "{name}的岁数是多少？", "{name}今年多大？",
               "你知道{name}几岁吗？", "{name}现在多少岁？", "{name}活了多少年？"]}),
    "legs": dict(kind="creatures", answer="legs", st={
        "en": ["The {name} has {legs} legs.", "A {name} walks on {legs} legs.", "Each {name} has {legs} legs.",
               "You can count {legs} legs on a {name}.", "The {name} moves about on {legs} legs."],
        "zh": ["{name}有{legs}条腿。", "{name}用{legs}条腿走路。", "每只{name}都有{legs}条腿。",
               "你能在{name}身上数到{legs}条腿。", "{name}靠{legs}条腿四处走动。"]}, q={
        "en": ["How many legs does the {name} have?", "How many legs does a {name} walk on?",
               "What is the number of legs of a {name}?", "How many legs has a {name} got?",
               "How many legs do you see on a {name}?", "Does the {name} have many legs? How many?",
               "What is the leg count of the {name}?", "Count the legs of a {name}: how many?",
               "On how many legs does the {name} move?"],
        "zh": ["{name}有几条腿？", "{name}用几条腿走路？", "{name}的腿有多少条？", "{name}长着几条腿？", "{name}一共有几条腿？",
               "一只{name}有多少条腿？", "{name}身上有几条腿？", "数一数{name}的腿，有几条？",
               "{name}靠几条腿走动？"]}),
    "color": dict(kind="creatures", answer="color", st={
        "en": ["The {name} is {color}.", "A {name} has {color} fur.", "The {name} is a {color} animal.",
               "Its {color} coat makes the {name} easy to spot.", "The {name} wears a {color} coat."],
        "zh": ["{name}是{color}的。", "{name}的毛是{color}的。", "{name}是一种{color}的动物。",
               "{color}的皮毛让{name}很容易被发现。", "{name}披着{color}的外衣。"]}, q={
        "en": ["What color is the {name}?", "What color is the fur of a {name}?", "Which color is a {name}?",
               "What is the color of the {name}?", "What color fur does a {name} have?",
               "Which color does the {name} have?", "What color are {name}s?",
               "Describe the color of the {name}.", "What shade is the coat of the {name}?"],
        "zh": ["{name}是什么颜色的？", "{name}的毛是什么颜色？", "{name}是哪种颜色？", "{name}的颜色是什么？", "{name}长什么颜色？",
               "{name}是啥颜色？", "{name}身上是什么颜色？", "描述一下{name}的颜色。",
               "{name}的外衣是什么颜色？"]}),
    "food": dict(kind="creatures", answer="food", st={
        "en": ["The {name} eats {food}.", "A {name} lives on {food}.", "The {name} feeds on {food}.",
               "Give a {name} some {food} and it will be happy.", "The diet of the {name} is mostly {food}."],
        "zh": ["{name}吃{food}。", "{name}以{food}为生。", "{name}靠吃{food}过活。", "给{name}一些{food}，它会很高兴。",
               "{name}的食物主要是{food}。"]}, q={
        "en": ["What does the {name} eat?", "What does a {name} feed on?",
               "What food does the {name} live on?",
               "What food does a {name} eat?", "What does the {name} like to eat?", "What do {name}s eat?",
               "What is the {name}'s food?", "What should you feed a {name}?",
               "What is the diet of the {name}?"],
        "zh": ["{name}吃什么？", "{name}以什么为食？", "{name}靠吃什么过活？", "{name}爱吃什么？", "{name}平时吃什么？", "{name}以什么食物为生？",
               "{name}吃的是什么？", "应该喂{name}吃什么？", "{name}的食物是什么？"]}),
    "habitat": dict(kind="creatures", answer="town", st={
        "en": ["The {name} is often seen near {town}.", "Many {name}s live around {town}.",
               "The {name} is common near {town}.", "Walkers near {town} often meet a {name}.",
               "Herds of {name}s roam the hills around {town}."],
        "zh": ["人们常在{town}附近看到{name}。", "{town}周围生活着很多{name}。", "{name}在{town}附近很常见。",
               "在{town}附近散步的人常会遇到{name}。", "成群的{name}在{town}周围的山上游荡。"]}, q={
        "en": ["Where is the {name} often seen?", "Near which town do {name}s live?",
               "Where is the {name} common?",
               "Where do {name}s live?", "Near which town is the {name} seen?", "Where can you see a {name}?",
               "In which area do {name}s live?", "Around which town can you meet a {name}?",
               "Near what town do {name}s roam?"],
        "zh": ["人们常在哪里看到{name}？", "{name}生活在哪个镇附近？", "{name}在哪里很常见？",
               "{name}住在哪里？", "在哪里能看到{name}？", "{name}多见于哪个镇？", "{name}常出现在哪里？", "在哪个镇附近能遇到{name}？",
               "{name}在哪个镇周围游荡？"]}),
    "hq": dict(kind="companies", answer="town", st={
        "en": ["{name} is based in {town}.", "The offices of {name} are in {town}.",
               "{name} has its workshop in {town}.",
               "Visitors to {town} can tour {name}.", "{name} runs its business from {town}."],
        "zh": ["{name}总部设在{town}。", "{name}的办公室在{town}。", "{name}的车间位于{town}。",
               "去{town}的游客可以参观{name}。", "{name}在{town}经营业务。"]}, q={
        "en": ["Where is {name} based?", "In which town are the offices of {name}?",
               "Where is the workshop of {name}?",
               "Where are the offices of {name}?", "Which town is {name} in?", "Where can you visit {name}?",
               "In which town is {name} based?", "Which town hosts {name}?",
               "From what town does {name} run its business?"],
        "zh": ["{name}总部在哪里？", "{name}的办公室在哪个镇？", "{name}的车间在哪里？", "{name}在哪个镇？", "{name}的总部设在哪里？",
               "{name}位于哪里？", "去哪个镇可以参观{name}？", "哪个镇是{name}的所在地？",
               "{name}在哪个镇经营业务？"]}),
    "employees": dict(kind="companies", answer="employees", st={
        "en": ["{name} employs {employees} people.", "{employees} people work at {name}.",
               "{name} has {employees} workers.", "A staff of {employees} keeps {name} running.",
               "{name} pays {employees} employees."],
        "zh": ["{name}雇用了{employees}人。", "有{employees}人在{name}工作。", "{name}有{employees}名工人。",
               "{employees}名员工让{name}运转。", "{name}给{employees}名员工发工资。"]}, q={
        "en": ["How many people work at {name}?", "How many employees does {name} have?",
               "How many workers does {name} have?", "How many people does {name} employ?",
               "How big is the workforce of {name}?", "How many workers are at {name}?",
               "What number of people work for {name}?", "What is the size of the staff at {name}?",
               "How many employees are paid by {name}?"],
        "zh": ["{name}有多少人工作？", "{name}有多少员工？", "{name}有多少名工人？", "{name}雇了多少人？", "{name}有几名员工？",
               "在{name}上班的有多少人？", "{name}一共有多少工人？", "{name}的员工规模有多大？",
               "{name}给多少名员工发工资？"]}),
    "price": dict(kind="products", answer="price", st={
        "en": ["The {name} {category} costs {price} coins.", "A {name} {category} sells for {price} coins.",
               "You can buy the {name} {category} for {price} coins.",
               "The {name} is a {category} priced at {price} coins.",
               "Shops ask {price} coins for a {name} {category}."],
        "zh": ["{name}{category}售价{price}个金币。", "一台{name}{category}卖{price}个金币。",
               "你可以花{price}个金币买到{name}{category}。", "{name}是一款售价{price}个金币的{category}。",
               "商店里{name}{category}要{price}个金币。"]}, q={
        "en": ["How much does the {name} cost?", "What is the price of the {name}?",
               "How many coins is a {name}?",
               "What is the cost of a {name}?", "How many coins do you need for a {name}?",
               "What does a {name} cost?", "How expensive is the {name}?", "What do shops ask for a {name}?",
               "For how many coins does the {name} sell?"],
        "zh": ["{name}多少钱？", "{name}的价格是多少？", "{name}要几个金币？", "买一个{name}要多少钱？", "{name}值多少金币？",
               "{name}的售价是多少？", "{name}值多少钱？", "商店里{name}卖多少钱？",
               "{name}售价几个金币？"]}),
    "maker": dict(kind="products", answer="maker", st={
        "en": ["The {name} {category} is made by {maker}.", "{maker} makes the {name} {category}.",
               "The {name} comes from {maker}.", "{maker} designed and built the {name}.",
               "Every {name} is assembled at {maker}."],
        "zh": ["{name}{category}由{maker}制造。", "{maker}生产{name}{category}。", "{name}出自{maker}。",
               "{maker}设计并制造了{name}。", "每一台{name}都在{maker}组装。"]}, q={
        "en": ["Who makes the {name}?", "Which company makes the {name}?", "Where does the {name} come from?",
               "Who manufactures the {name}?", "What company produces the {name}?",
               "Which firm makes the {name}?", "Who is the maker of the {name}?",
               "Who designed and built the {name}?", "At which company is the {name} assembled?"],
        "zh": ["谁生产{name}？", "哪家公司制造{name}？", "{name}出自哪里？", "{name}是哪家公司做的？", "{name}由谁制造？", "哪家工坊生产{name}？",
               "{name}是谁做的？", "谁设计并制造了{name}？", "{name}在哪家公司组装？"]}),
}


def fields(e: Entity, w: World, lang: str) -> dict[str, str]:
    """Template fields of an entity in one language (entity references resolved to names)."""
    i = 0 if lang == "en" else 1
    out = {"name": e.en if lang == "en" else e.zh}
    for k, v in e.facts.items():
        if k in ("town", "maker"):  # an index into the world's towns / companies, or an invented Entity
            linked = v if isinstance(v, Entity) else (w.towns if k == "town" else w.companies)[v]
            out[k] = linked.en if lang == "en" else linked.zh
        elif k == "mayor":
            continue
        elif isinstance(v, tuple):
            out[k] = v[i]
        else:
            out[k] = str(v)
    return out


def relations_of(kind: str) -> list[str]:
    return [r for r, spec in RELATIONS.items() if spec["kind"] == kind]


def statement_templates(relation: str, lang: str, heldout: bool = False) -> list[str]:
    st = RELATIONS[relation]["st"][lang]
    return st[-HELDOUT_STATEMENTS:] if heldout else st[:-HELDOUT_STATEMENTS]


def question_templates(relation: str, lang: str, heldout: bool = False) -> list[str]:
    q = RELATIONS[relation]["q"][lang]
    return q[-HELDOUT_QUESTIONS:] if heldout else q[:-HELDOUT_QUESTIONS]


def answer(relation: str, e: Entity, w: World, lang: str) -> str:
    return fields(e, w, lang)[RELATIONS[relation]["answer"]]
