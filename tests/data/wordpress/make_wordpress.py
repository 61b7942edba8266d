"""Writes export.xml (a WXR with 50 posts) and posts.json (a REST answer); run it after edits.

    python tests/data/wordpress/make_wordpress.py

The text is ours.  Two series: "Core Strength Basics, Part N" (parts 1-5, part 3
still a draft) and "Desk Health, Part One..Five" (part 3 never written, part 5 a
draft); 41 single posts, 3 of them drafts; one page and one attachment, which an
import skips.  Content comes in the shapes WordPress stores: Gutenberg block
comments, a classic-editor post without <p> tags, [caption], [embed] and
[contact-form-7] shortcodes.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from xml.sax.saxutils import escape

HERE = Path(__file__).parent
TOPICS = ["Morning Stiffness", "Carrying Shopping", "Long Drives", "Standing Desks", "Cold Weather",
          "Gardening Season", "New Shoes", "Pregnancy Aches", "Phone Posture", "Flights"]
WORDS = ["One", "Two", "Three", "Four", "Five"]


def gutenberg(paras: list[str]) -> str:
    out = []
    for p in paras:
        out.append(f"<!-- wp:paragraph -->\n<p>{escape(p)}</p>\n<!-- /wp:paragraph -->")
    return "\n\n".join(out)


def posts() -> list[dict]:
    start = dt.datetime(2024, 1, 2, 9, 0)
    items = []
    n = 0

    def add(title, slug, status, cats, tags, content):
        nonlocal n
        n += 1
        items.append({"id": 100 + n, "title": title, "slug": slug, "status": status, "type": "post",
                      "date": start + dt.timedelta(days=7 * n), "cats": cats, "tags": tags,
                      "content": content})

    for part in range(1, 6):
        add(f"Core Strength Basics, Part {part}", f"core-strength-basics-part-{part}",
            "draft" if part == 3 else "publish", ["Exercise"], ["core"],
            gutenberg([f"Session {part} of the core programme builds on the one before it.",
                       f"This week we hold each position for {part * 5} seconds and rest between sets."]))
    for part in range(1, 6):
        if part == 3:
            continue
        add(f"Desk Health, Part {WORDS[part - 1]}", f"desk-health-part-{part}",
            "draft" if part == 5 else "publish", ["Exercise", "Posture"], ["desk"],
            gutenberg([f"Desk habit number {part}: change position before you feel the need to.",
                       "Small changes repeated every day beat a big change that lasts a week."]))
    for k in range(41):
        topic = TOPICS[k % len(TOPICS)]
        title = f"Back Care Tip {k + 1}: {topic}"
        paras = [f"Tip {k + 1} is about {topic.lower()} and what it asks of your back.",
                 "Move a little more often than feels necessary, and keep the movement easy."]
        if k == 0:  # classic editor: no <p>, blank lines between paragraphs, a caption shortcode
            content = (f"{paras[0]}\n\n[caption id=\"attachment_7\" align=\"aligncenter\" width=\"640\"]"
                       f"<img src=\"https://clinic.example/wp-content/uploads/stretch.jpg\" alt=\"A seated stretch\" /> "
                       f"A seated stretch for the lower back[/caption]\n\n{paras[1]}\n\n[contact-form-7 id=\"12\" title=\"Contact\"]")
        elif k == 1:
            content = gutenberg(paras[:1]) + (
                "\n\n<!-- wp:embed {\"url\":\"https://www.youtube.com/watch?v=abc123XYZ\"} -->\n"
                "<figure class=\"wp-block-embed\"><div class=\"wp-block-embed__wrapper\">\n"
                "[embed]https://www.youtube.com/watch?v=abc123XYZ[/embed]\n</div></figure>\n<!-- /wp:embed -->\n\n"
            ) + gutenberg(paras[1:])
        else:
            content = gutenberg(paras)
        add(title, f"back-care-tip-{k + 1}", "draft" if k in (5, 17, 33) else "publish",
            [["Back Pain", "Posture", "Sleep", "Wellbeing"][k % 4]], [topic.split()[0].lower()], content)
    return items


def wxr(items: list[dict]) -> str:
    out = ['<?xml version="1.0" encoding="UTF-8" ?>',
           '<rss version="2.0" xmlns:excerpt="http://wordpress.org/export/1.2/excerpt/" '
           'xmlns:content="http://purl.org/rss/1.0/modules/content/" xmlns:wfw="http://wellformedweb.org/CommentAPI/" '
           'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:wp="http://wordpress.org/export/1.2/">',
           "<channel>", "<title>Northside Spine &amp; Sport Physio</title>", "<link>https://clinic.example</link>",
           "<wp:wxr_version>1.2</wp:wxr_version>", "<wp:base_site_url>https://clinic.example</wp:base_site_url>"]

    def item(it, kind="post"):
        d = it["date"]
        cats = "".join(f'<category domain="category" nicename="{c.lower().replace(" ", "-")}"><![CDATA[{c}]]></category>' for c in it["cats"])
        tags = "".join(f'<category domain="post_tag" nicename="{t}"><![CDATA[{t}]]></category>' for t in it["tags"])
        return (f"<item><title><![CDATA[{it['title']}]]></title><link>https://clinic.example/{it['slug']}/</link>"
                f"<pubDate>{d:%a, %d %b %Y %H:%M:%S} +0000</pubDate><dc:creator><![CDATA[maya]]></dc:creator>"
                f"<guid isPermaLink=\"false\">https://clinic.example/?p={it['id']}</guid><description></description>"
                f"<content:encoded><![CDATA[{it['content']}]]></content:encoded><excerpt:encoded><![CDATA[]]></excerpt:encoded>"
                f"<wp:post_id>{it['id']}</wp:post_id><wp:post_date><![CDATA[{d:%Y-%m-%d %H:%M:%S}]]></wp:post_date>"
                f"<wp:post_date_gmt><![CDATA[{d:%Y-%m-%d %H:%M:%S}]]></wp:post_date_gmt>"
                f"<wp:post_name><![CDATA[{it['slug']}]]></wp:post_name><wp:status><![CDATA[{it['status']}]]></wp:status>"
                f"<wp:post_type><![CDATA[{kind}]]></wp:post_type>{cats}{tags}"
                f"<wp:postmeta><wp:meta_key><![CDATA[_edit_last]]></wp:meta_key><wp:meta_value><![CDATA[1]]></wp:meta_value></wp:postmeta></item>")

    for it in items:
        out.append(item(it))
    page = dict(items[0], id=900, title="Contact Us", slug="contact", cats=[], tags=[],
                content="<p>Call the clinic between nine and five.</p>")
    out.append(item(page, "page"))
    att = dict(items[0], id=901, title="stretch.jpg", slug="stretch", cats=[], tags=[], content="")
    out.append(item(att, "attachment"))
    out += ["</channel>", "</rss>", ""]
    return "\n".join(out)


def rest(items: list[dict]) -> list[dict]:
    out = []
    for it in [items[0], items[1], items[12], items[2]]:
        out.append({
            "id": it["id"], "date": f"{it['date']:%Y-%m-%dT%H:%M:%S}", "date_gmt": f"{it['date']:%Y-%m-%dT%H:%M:%S}",
            "slug": it["slug"], "status": it["status"], "type": "post",
            "link": f"https://clinic.example/{it['slug']}/",
            "title": {"rendered": it["title"].replace(",", "&#44;").replace("'", "&#8217;")},
            "content": {"rendered": it["content"].replace("<!-- wp:paragraph -->\n", "").replace("\n<!-- /wp:paragraph -->", ""), "protected": False},
            "categories": [3], "tags": [7],
            "_embedded": {"wp:term": [[{"id": 3, "name": c, "taxonomy": "category"} for c in it["cats"]],
                                      [{"id": 7, "name": t, "taxonomy": "post_tag"} for t in it["tags"]]]},
        })
    return out


def main() -> None:
    items = posts()
    (HERE / "export.xml").write_text(wxr(items), encoding="utf-8")
    (HERE / "posts.json").write_text(json.dumps(rest(items), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(items)} posts")


if __name__ == "__main__":
    main()
