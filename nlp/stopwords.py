"""Word lists for the offline keyphrase extractor.

``STOPWORDS`` break candidate phrases (function words, pronouns, auxiliaries). ``BREAKERS`` are
vague verbs, adverbs and evaluative adjectives ("make", "really", "great") that break phrases
too, because "make great coffee" should yield "coffee". ``WEAK_NOUNS`` ("work", "time", "way")
may be part of a phrase ("remote work", "time management") but are never a topic alone.
"""

from __future__ import annotations

STOPWORDS = frozenset("""
a about above across after afterwards again against all almost alone along already also although
always am among amongst an and another any anybody anyhow anyone anything anyway anywhere are
around as at be became because become becomes becoming been before beforehand behind being below
beside besides between beyond both but by can cannot could did do does doing done down during each
either else elsewhere enough even ever every everybody everyone everything everywhere except few
for former formerly from further had has have having he hence her here hereafter hereby herein
hers herself him himself his how however i if in indeed into is it its itself just last latter
least less many may me meanwhile might mine more moreover most mostly much must my myself namely
neither never nevertheless next no nobody none nor not nothing now nowhere of off often on once
one only onto or other others otherwise our ours ourselves out over own per perhaps please quite
rather re same several she should since so some somehow someone something sometime sometimes
somewhere still such than that the their theirs them themselves then thence there thereafter
thereby therefore therein thereupon these they this those though through throughout thru thus to
together too toward towards under until up upon us very via was we well were what whatever when
whence whenever where whereafter whereas whereby wherein whereupon wherever whether which while
whither who whoever whole whom whose why will with within without would yet you your yours
yourself yourselves s t d ll m ve re don doesn didn isn aren wasn weren hasn haven hadn won
wouldn shouldn couldn can't won't don't doesn't didn't isn't aren't wasn't weren't i'm i've i'll
i'd you're you've you'll we're we've we'll they're they've it's that's there's here's let's
what's who's he's she's ain't o oh yes ok okay etc vs via eg ie
two three four five six seven eight nine ten eleven twelve twenty thirty forty fifty hundred
thousand million billion dozen half once twice
""".split())

BREAKERS = frozenset("""
able actually add added adding allow allows amazing another apply ask asked avoid away awesome bad
based basic basically best better big bring build building call called came certain certainly
check choose chose clear clearly click close come comes coming common completely consider could
create created creating decide definitely different difficult do done easily easy effective either
enjoy entire especially even ever every exactly extra fairly far feel feels felt few find finding
finds fine first five following found four free full fully get gets getting give given gives go
goes going gone good got great greatly handle happen happens hard help helpful helps high highly
hit hold huge important include includes including instead interesting keep keeps key know known
large larger largest later learn learned least left less let like likely little long look looking
looks low made main major make makes making many maybe mean means might most move much must need
needed needs new nice no note offer old one ones overall pick possible pretty probably
provide pull put quick quickly rather read ready real really recent recently remember require
required right run said same saw say says second see seem seems seen set sets share short show
shows significant significantly similar simple simply since small so something start started
starting stay still subscribe sure take takes taking talk tell ten than thank thanks think third
three through today together told took top total tried true try trying turn two typical typically
ultimately understand unique use used useful uses using usual usually various want wanted wants
well went whole within worth would write yet
""".split())

WEAK_NOUNS = frozenset("""
answer approach area areas back bit case cases change changes day days deal end fact focus home
idea ideas issue issues item items kind kinds level list lot lots matter minute minutes moment
month months number numbers order part parts people person place plan point points problem
problems reason reasons side sort step steps stuff term terms thing things time times tip tips
type types value way ways week weeks word words work works year years
""".split())

# Words about the post itself, never its topic ("a homeowner's guide"): they break phrases.
META_WORDS = frozenset("""
article articles blog blogs chapter chapters conclusion episode example examples guide guides
introduction newsletter overview post posts section sections series
summary tip tips tutorial tutorials
""".split())
