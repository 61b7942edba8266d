"""Writes the HTML test corpus and its expectations (deterministic; run it again after edits).

    python tests/data/pages/make_corpus.py

Every page is an article we wrote ourselves, wrapped in the markup shape of a real
WordPress theme (Astra, Divi, Elementor, GeneratePress, Avada, Kadence) or a
Squarespace-like page, with the usual site furniture around and inside it.
``expectations.json`` lists, per page, the body paragraphs in order and the
furniture lines that must not survive the import.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

HERE = Path(__file__).parent
SITE = "Northside Spine & Sport Physio"

ARTICLES = [
    {
        "slug": "why-walking-helps-a-sore-back",
        "title": "Why Walking Helps a Sore Back",
        "date": "2025-03-04",
        "cats": ["Back Pain"],
        "tags": ["walking", "recovery"],
        "blocks": [
            ("p", "Most people with a sore lower back are told to rest, yet a short daily walk usually does more good than a day on the sofa."),
            ("h2", "What happens when you walk"),
            ("p", "Walking moves the joints of the spine through a small, gentle range and asks the deep trunk muscles to work without strain."),
            ("ul", ["Start with ten minutes on flat ground.", "Add two minutes every few days.", "Stop at the point where pain builds, not after it."]),
            ("img", "/wp-content/uploads/2025/03/walk-path.jpg", "A person walking on a park path"),
            ("p", "If a walk makes the pain sharper for more than an hour afterwards, shorten the next one rather than giving up."),
        ],
    },
    {
        "slug": "sitting-at-a-desk-without-stiffness",
        "title": "Sitting at a Desk Without Stiffness",
        "date": "2025-01-20",
        "cats": ["Posture"],
        "tags": ["desk", "work"],
        "blocks": [
            ("p", "There is no single perfect sitting posture; the best position is the next one, because stiffness comes from staying still."),
            ("h2", "Three small changes"),
            ("ol", ["Raise the screen so the top edge sits at eye level.", "Keep both feet supported, on the floor or a box.", "Stand up every half hour, even for a moment."]),
            ("quote", "After a week of setting a timer, my afternoons stopped ending with a stiff back."),
            ("p", "A chair with a curved backrest helps, but moving often matters more than any piece of furniture."),
        ],
    },
    {
        "slug": "sleeping-positions-for-back-pain",
        "title": "Sleeping Positions for Back Pain",
        "date": "2024-11-02",
        "cats": ["Back Pain", "Sleep"],
        "tags": ["sleep"],
        "blocks": [
            ("p", "A painful night often starts with a position that twists the spine for hours, so a pillow in the right place can change a lot."),
            ("h2", "On your side"),
            ("p", "Bend both knees slightly and put a firm pillow between them, so the upper leg does not pull the pelvis forward."),
            ("h2", "On your back"),
            ("p", "A rolled towel under the knees lets the lower back settle into the mattress instead of arching."),
            ("img", "/wp-content/uploads/2024/11/pillow-knees.jpg", None),
            ("p", "Getting out of bed by rolling onto your side first spares the back the hardest movement of the morning."),
        ],
    },
    {
        "slug": "core-strength-part-1",
        "title": "Core Strength for a Stronger Back, Part 1",
        "date": "2025-02-03",
        "cats": ["Exercise"],
        "tags": ["core", "series"],
        "blocks": [
            ("p", "The core is not only the abdominal muscles; it is the whole cylinder of muscle that holds the spine, from the diaphragm to the pelvic floor."),
            ("p", "In this first part we learn to find those muscles and switch them on gently while lying down."),
            ("video", "youtube", "dQw4w9WgXcQ"),
            ("ol", ["Lie on your back with your knees bent.", "Breathe out and draw the belly button softly towards the spine.", "Hold for five breaths, then relax completely."]),
            ("p", "Practise this twice a day for a week before moving on to the second part."),
        ],
    },
    {
        "slug": "core-strength-part-2",
        "title": "Core Strength for a Stronger Back, Part 2",
        "date": "2025-02-10",
        "cats": ["Exercise"],
        "tags": ["core", "series"],
        "blocks": [
            ("p", "Once you can hold the gentle contraction from the first part, the next step is to keep it while the arms and legs move."),
            ("h2", "The dead bug"),
            ("p", "Lift one arm overhead while the opposite heel slides along the floor, then swap sides without letting the lower back lift."),
            ("table", [["Exercise", "Sets", "How often"], ["Dead bug", "3 x 8", "Daily"], ["Bridge", "3 x 10", "Every other day"]]),
            ("p", "If the back arches, make the movement smaller; control counts for more than range."),
        ],
    },
    {
        "slug": "when-to-see-a-physiotherapist",
        "title": "When to See a Physiotherapist About Back Pain",
        "date": "2024-09-15",
        "cats": ["Back Pain"],
        "tags": ["advice"],
        "blocks": [
            ("p", "Most back pain settles within six weeks, but some signs mean it is worth getting an assessment sooner."),
            ("ul", ["Pain that spreads below the knee.", "Numbness or pins and needles in the leg.", "Pain that wakes you every night."]),
            ("p", "Numbness around the saddle area or trouble passing urine needs the emergency department the same day, not a clinic appointment."),
            ("p", "For everything else, an assessment gives you a plan and a clear idea of what to expect over the coming weeks."),
        ],
    },
    {
        "slug": "lifting-without-hurting-your-back",
        "title": "Lifting Without Hurting Your Back",
        "date": "2025-04-22",
        "cats": ["Everyday Life"],
        "tags": ["lifting", "gardening"],
        "blocks": [
            ("p", "A strong back can lift in many shapes; the trouble usually comes from a heavy load lifted suddenly and far from the body."),
            ("h2", "Keep the load close"),
            ("p", "Hold the box against your stomach and turn with your feet, not by twisting at the waist."),
            ("img", "/wp-content/uploads/2025/04/lift-box.jpg", "Lifting a box held close to the body"),
            ("p", "In the garden, split one big bag of compost into two trips; the second trip costs a minute and saves a week."),
        ],
    },
    {
        "slug": "stretches-for-tight-hips",
        "title": "Gentle Stretches for Tight Hips",
        "date": "2024-12-09",
        "cats": ["Exercise"],
        "tags": ["stretching", "hips"],
        "blocks": [
            ("p", "Tight hip flexors pull on the front of the lower spine, which is why long days of sitting can end with an aching back."),
            ("h2", "The kneeling lunge"),
            ("p", "Kneel on a cushion with one foot in front, tuck the tailbone under and shift your weight forward until you feel the front of the back hip stretch."),
            ("video", "vimeo", "76979871"),
            ("p", "Hold for thirty seconds on each side and breathe slowly; a stretch should feel strong but never sharp."),
        ],
    },
    {
        "slug": "back-pain-and-stress",
        "title": "How Stress Turns Up Back Pain",
        "date": "2025-05-30",
        "cats": ["Wellbeing"],
        "tags": ["stress"],
        "blocks": [
            ("p", "Pain is produced by the nervous system, and a stressed nervous system turns the volume up on every signal it receives."),
            ("p", "That does not make the pain imaginary; it means that sleep, worry and workload belong in the treatment plan alongside exercise."),
            ("h2", "Simple ways to turn the volume down"),
            ("ul", ["Slow breathing with a longer out-breath.", "A regular bedtime, even at weekends.", "Movement you enjoy, not only exercises you endure."]),
            ("p", "Our webinar covers this in more depth, with time for your questions at the end."),
        ],
    },
    {
        "slug": "running-again-after-back-pain",
        "title": "Running Again After Back Pain",
        "date": "2025-06-12",
        "cats": ["Exercise", "Running"],
        "tags": ["running"],
        "blocks": [
            ("p", "Returning to running is less about the back itself and more about building load back up at a pace the tissues can follow."),
            ("h2", "A walk-run start"),
            ("p", "Alternate one minute of easy running with two minutes of walking for twenty minutes, three times a week."),
            ("img", "/wp-content/uploads/2025/06/runner.jpg", None),
            ("p", "If the back is no worse the next morning, add one running minute per session; if it is worse, repeat the week."),
        ],
    },
]

# Furniture: (name, html, lines that must be gone).  {title}/{other} are filled per page.
WIDGETS = {
    "cookie": (
        '<div id="cookie-notice" class="cookie-notice-container cn-position-bottom"><span id="cn-notice-text">'
        "We use cookies to give you the best experience on our website.</span>"
        '<a href="#" class="cn-set-cookie cn-button">Accept all cookies</a><a href="#" class="cn-more-info">Cookie settings</a></div>',
        ["We use cookies to give you the best experience on our website.", "Accept all cookies", "Cookie settings"],
    ),
    "breadcrumbs": (
        '<nav aria-label="breadcrumbs" class="yoast-breadcrumbs"><span><span><a href="/">Home</a></span> » '
        '<span><a href="/category/blog/">Clinic Blog</a></span> » <span class="breadcrumb_last" aria-current="page">{title}</span></span></nav>',
        ["Home » Clinic Blog » {title}"],
    ),
    "share": (
        '<div class="sharedaddy sd-sharing-enabled"><div class="sd-block sd-social"><h3 class="sd-title">Share this article:</h3>'
        '<ul><li><a class="share-facebook" href="#">Share on Facebook</a></li><li><a class="share-twitter" href="#">Share on X</a></li>'
        '<li><a class="share-linkedin" href="#">Share on LinkedIn</a></li></ul></div></div>',
        ["Share this article:", "Share on Facebook", "Share on X", "Share on LinkedIn"],
    ),
    "related": (
        '<div class="related-posts yarpp-related"><h3>Related Posts</h3><ol><li><a href="/{other_slug}/">{other}</a></li>'
        '<li><a href="/posture-myths/">Five Posture Myths We Hear Every Week</a></li></ol></div>',
        ["Related Posts", "{other}", "Five Posture Myths We Hear Every Week"],
    ),
    "comments": (
        '<div id="comments" class="comments-area"><div id="respond" class="comment-respond"><h3 id="reply-title" class="comment-reply-title">Leave a Reply</h3>'
        '<form action="/wp-comments-post.php" method="post" id="commentform" class="comment-form"><p class="comment-notes">'
        "Your email address will not be published. Required fields are marked *</p>"
        '<p class="comment-form-comment"><label for="comment">Comment</label><textarea id="comment" name="comment"></textarea></p>'
        '<p class="form-submit"><input name="submit" type="submit" id="submit" class="submit" value="Post Comment"></p></form></div></div>',
        ["Leave a Reply", "Your email address will not be published. Required fields are marked *", "Post Comment"],
    ),
    "newsletter": (
        '<div class="newsletter-box mc4wp-form-wrap"><h4>Get our weekly back care tips</h4>'
        "<p>Join 2,000 readers who get one practical tip in their inbox every Friday.</p>"
        '<form class="mc4wp-form"><input type="email" name="EMAIL" placeholder="Your email address"><button type="submit">Sign me up</button></form></div>',
        ["Get our weekly back care tips", "Join 2,000 readers who get one practical tip in their inbox every Friday.", "Sign me up"],
    ),
    "author": (
        '<div class="author-box saboxplugin-wrap"><div class="saboxplugin-authorname"><h4>About the author</h4></div>'
        "<p>Maya Ellis is a chartered physiotherapist who has treated runners and desk workers for twelve years.</p>"
        '<a class="author-link" href="/author/maya/">View all posts by Maya Ellis</a></div>',
        ["About the author", "Maya Ellis is a chartered physiotherapist who has treated runners and desk workers for twelve years.", "View all posts by Maya Ellis"],
    ),
    "sidebar": (
        '<aside id="secondary" class="widget-area sidebar"><section class="widget widget_recent_entries"><h2 class="widget-title">Recent Posts</h2>'
        '<ul><li><a href="/{other_slug}/">{other}</a></li></ul></section><section class="widget widget_categories">'
        '<h2 class="widget-title">Browse by Topic</h2><ul><li><a href="/category/back-pain/">Back Pain</a></li></ul></section></aside>',
        ["Recent Posts", "Browse by Topic"],
    ),
}

# Furniture placed inside the article's content area (teaser links, an in-content newsletter box).
TEASER = (
    '<p class="teaser"><strong>Read next:</strong> <a href="/{other_slug}/">{other} →</a></p>',
    ["Read next: {other} →"],
)
INLINE_NEWSLETTER = (
    '<div class="wp-block-group newsletter-signup"><p>Want one back care tip every Friday? Subscribe below.</p>'
    '<form class="wpforms-form"><input type="email"><button>Subscribe</button></form></div>',
    ["Want one back care tip every Friday? Subscribe below."],
)
NAV = ["Book an Online Assessment", "Meet Our Physiotherapists", "Clinic Opening Hours"]
FOOTER = ["© 2025 Northside Spine & Sport Physio. All rights reserved.", "Privacy Policy and Terms of Use"]


def esc(text: str) -> str:
    return html.escape(text, quote=False)


def inline(text: str, i: int) -> str:
    """Body text with some inline markup, varying per page."""
    words = esc(text).split(" ")
    if i % 3 == 0 and len(words) > 6:
        words[2] = f"<strong>{words[2]}</strong>"
    if i % 4 == 1 and len(words) > 8:
        words[5] = f'<a href="/blog/more/">{words[5]}</a>'
    if i % 5 == 2 and len(words) > 4:
        words[3] = f"<em>{words[3]}</em>"
    return " ".join(words)


def media_md(article: dict, i: int) -> list[str]:
    """The Markdown lines the images and videos must become, in order."""
    out = []
    for block in article["blocks"]:
        if block[0] == "img":
            url = "https://northside-physio.example" + block[1]
            out.append(f"![{block[2]}]({url})" if block[2] else f"![]({url})\n*Caption needed: describe this image.*")
        elif block[0] == "video" and block[1] == "youtube":
            out.append(f"[![Watch the video on YouTube](https://img.youtube.com/vi/{block[2]}/hqdefault.jpg)](https://www.youtube.com/watch?v={block[2]})")
        elif block[0] == "video":
            out.append(f"[\u25b6 Watch the video on Vimeo](https://vimeo.com/{block[2]})")
    return out


def body_html(article: dict, i: int) -> tuple[str, list[str]]:
    out, body = [], []
    for n, block in enumerate(article["blocks"]):
        kind = block[0]
        if kind == "p":
            out.append(f"<p>{inline(block[1], i + n)}</p>")
            body.append(block[1])
        elif kind == "h2":
            out.append(f'<h2 class="wp-block-heading">{esc(block[1])}</h2>')
            body.append(block[1])
        elif kind in ("ul", "ol"):
            items = "".join(f"<li>{esc(t)}</li>" for t in block[1])
            out.append(f'<{kind} class="wp-block-list">{items}</{kind}>')
            body.extend(block[1])
        elif kind == "quote":
            out.append(f'<blockquote class="wp-block-quote"><p>{esc(block[1])}</p></blockquote>')
            body.append(block[1])
        elif kind == "img":
            alt = f' alt="{esc(block[2])}"' if block[2] else (' alt=""' if i % 2 else "")
            out.append(
                f'<figure class="wp-block-image size-large"><img decoding="async" width="1024" height="683" '
                f'src="{block[1]}"{alt} class="wp-image-{100 + n}"></figure>'
            )
        elif kind == "video":
            src = (
                f"https://www.youtube.com/embed/{block[2]}?feature=oembed"
                if block[1] == "youtube"
                else f"https://player.vimeo.com/video/{block[2]}?dnt=1"
            )
            out.append(
                f'<figure class="wp-block-embed is-type-video wp-block-embed-{block[1]}"><div class="wp-block-embed__wrapper">'
                f'<iframe title="Exercise video" width="640" height="360" src="{src}" frameborder="0" allowfullscreen></iframe></div></figure>'
            )
        elif kind == "table":
            head = "".join(f"<th>{esc(c)}</th>" for c in block[1][0])
            rows = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in block[1][1:])
            out.append(f'<figure class="wp-block-table"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></figure>')
            body.extend(" | ".join(r) for r in block[1])
    return "\n".join(out), body


def head(article: dict, theme: str, i: int) -> str:
    t = esc(article["title"])
    metas = [
        f'<meta property="og:site_name" content="{esc(SITE)}">',
        f'<link rel="canonical" href="https://northside-physio.example/{article["slug"]}/">',
    ]
    if i % 3 != 2:
        metas.append(f'<meta property="og:title" content="{t}">')
    if i % 2 == 0:
        metas.append(f'<meta property="article:published_time" content="{article["date"]}T08:30:00+00:00">')
    for tag in article["tags"]:
        metas.append(f'<meta property="article:tag" content="{esc(tag)}">')
    return (
        '<!DOCTYPE html>\n<html lang="en-GB">\n<head>\n<meta charset="UTF-8">\n'
        f"<title>{t} | {esc(SITE)}</title>\n" + "\n".join(metas)
        + f'\n<script>window.themeName = "{theme}"; document.documentElement.className += " js";</script>\n'
        '<style>.entry-content{max-width:720px}</style>\n</head>\n'
    )


def post_meta(article: dict, i: int) -> tuple[str, list[str]]:
    cats = ", ".join(f'<a href="/category/{c.lower()}/" rel="category tag">{esc(c)}</a>' for c in article["cats"])
    tags = ", ".join(f'<a href="/tag/{t}/" rel="tag">{esc(t)}</a>' for t in article["tags"])
    date = f'<time class="entry-date published" datetime="{article["date"]}T08:30:00+00:00">{article["date"]}</time>'
    line = f'<div class="entry-meta"><span class="posted-on">{date}</span> <span class="cat-links">{cats}</span> <span class="tags-links">{tags}</span></div>'
    return line, []


def nav_html() -> str:
    items = "".join(f'<li class="menu-item"><a href="/x/">{esc(n)}</a></li>' for n in NAV)
    return f'<nav id="site-navigation" class="main-navigation"><ul id="primary-menu" class="menu">{items}</ul></nav>'


def footer_html() -> str:
    return f'<footer id="colophon" class="site-footer"><div class="site-info"><p>{esc(FOOTER[0])}</p><p><a href="/privacy/">{esc(FOOTER[1])}</a></p></div></footer>'


def widget(name: str, fill: dict) -> tuple[str, list[str]]:
    markup, lines = WIDGETS[name]
    return markup.format(**fill), [ln.format(**fill) for ln in lines]


def theme_page(theme: str, article: dict, i: int, picks: list[str], inside: list[str], fill: dict) -> tuple[str, list[str], list[str]]:
    content, body = body_html(article, i)
    furniture = list(NAV) + list(FOOTER)
    w = {}
    for name in picks:
        w[name], lines = widget(name, fill)
        furniture += lines
    extra_inside = ""
    if "teaser" in inside:
        extra_inside += "\n" + TEASER[0].format(**fill)
        furniture += [ln.format(**fill) for ln in TEASER[1]]
    if "newsletter" in inside:
        mid = content.index("</p>") + 4
        content = content[:mid] + "\n" + INLINE_NEWSLETTER[0] + content[mid:]
        furniture += INLINE_NEWSLETTER[1]
    if i % 4 == 2 and extra_inside:
        cut = content.index("</p>") + 4  # a teaser between two paragraphs
        content = content[:cut] + extra_inside + content[cut:]
    else:
        content += extra_inside
    meta, _ = post_meta(article, i)
    t = esc(article["title"])
    g = w.get
    if theme == "astra":
        body_markup = (
            f'<body class="post-template-default single single-post ast-separate-container">{g("cookie", "")}<div id="page" class="hfeed site">'
            f'<header class="site-header ast-primary-header"><div class="ast-builder-grid-row"><div class="site-branding"><p class="site-title"><a href="/">{esc(SITE)}</a></p></div>{nav_html()}</div></header>'
            f'<div id="content" class="site-content"><div class="ast-container">{g("breadcrumbs", "")}<div id="primary" class="content-area primary"><main id="main" class="site-main">'
            f'<article class="post type-post status-publish ast-article-single"><div class="ast-post-format- single-layout-1"><header class="entry-header"><h1 class="entry-title" itemprop="headline">{t}</h1>{meta}</header>'
            f'<div class="entry-content clear" itemprop="text">\n{content}\n</div></div></article>{g("share", "")}{g("author", "")}{g("related", "")}{g("comments", "")}</main></div>{g("sidebar", "")}</div></div>'
            f'{g("newsletter", "")}{footer_html()}</div></body></html>'
        )
    elif theme == "divi":
        body_markup = (
            f'<body class="single single-post et_pb_pagebuilder_layout et_right_sidebar">{g("cookie", "")}<div id="page-container"><header id="main-header"><div class="container clearfix et_menu_container">{nav_html()}</div></header>'
            f'<div id="et-main-area"><div id="main-content"><div class="container"><div id="content-area" class="clearfix"><div id="left-area">{g("breadcrumbs", "")}'
            f'<article id="post-12" class="et_pb_post post type-post"><div class="et_post_meta_wrapper"><h1 class="entry-title">{t}</h1><p class="post-meta">by <span class="author vcard">Maya Ellis</span> | {meta}</p></div>'
            f'<div class="entry-content"><div class="et-l et-l--post"><div class="et_builder_inner_content et_pb_gutters3"><div class="et_pb_section et_pb_section_0"><div class="et_pb_row et_pb_row_0"><div class="et_pb_column et_pb_column_4_4">'
            f'<div class="et_pb_module et_pb_text et_pb_text_0"><div class="et_pb_text_inner">\n{content}\n</div></div>'
            f'<div class="et_pb_module et_pb_social_media_follow">{g("share", "")}</div>'
            f'<div class="et_pb_module et_pb_newsletter et_pb_subscribe">{g("newsletter", "")}</div></div></div></div></div></div></div>'
            f'<div class="et_post_meta_wrapper">{g("author", "")}{g("related", "")}<section id="comment-wrap" class="et_pb_comments_module">{g("comments", "")}</section></div></article></div>'
            f'{g("sidebar", "")}</div></div></div><footer id="main-footer">{footer_html()}</footer></div></div></body></html>'
        )
    elif theme == "elementor":
        def w_el(kind: str, inner: str) -> str:
            return f'<div class="elementor-element elementor-widget elementor-widget-{kind}" data-widget_type="{kind}.default"><div class="elementor-widget-container">{inner}</div></div>'

        body_markup = (
            f'<body class="post-template single elementor-default elementor-page">{g("cookie", "")}<div data-elementor-type="header" class="elementor elementor-location-header">'
            f'{w_el("nav-menu", nav_html())}</div><div data-elementor-type="single-post" class="elementor elementor-location-single post type-post">'
            f'<section class="elementor-section elementor-top-section"><div class="elementor-container"><div class="elementor-column elementor-col-100"><div class="elementor-widget-wrap">'
            f'{w_el("breadcrumbs", g("breadcrumbs", ""))}{w_el("theme-post-title", f"<h1 class=elementor-heading-title>{t}</h1>")}{w_el("post-info", meta)}'
            f'{w_el("theme-post-content", chr(10) + content + chr(10))}{w_el("share-buttons", g("share", ""))}{w_el("author-box", g("author", ""))}'
            f'{w_el("form", g("newsletter", ""))}{w_el("posts", g("related", ""))}{w_el("post-comments", g("comments", ""))}'
            f'</div></div></div></section></div><div data-elementor-type="footer" class="elementor elementor-location-footer">{footer_html()}</div>{g("sidebar", "")}</body></html>'
        )
    elif theme == "generatepress":
        body_markup = (
            f'<body class="post-template-default single single-post right-sidebar nav-float-right">{g("cookie", "")}<header class="site-header" id="masthead"><div class="inside-header grid-container">{nav_html()}</div></header>'
            f'<div class="site grid-container container hfeed" id="page"><div class="site-content" id="content"><div class="content-area" id="primary"><main class="site-main" id="main">'
            f'<article id="post-7" class="post type-post status-publish"><div class="inside-article">{g("breadcrumbs", "")}<header class="entry-header"><h1 class="entry-title" itemprop="headline">{t}</h1>{meta}</header>'
            f'<div class="entry-content" itemprop="text">\n{content}\n</div><footer class="entry-meta" aria-label="Entry meta">{g("share", "")}'
            f'<nav id="nav-below" class="post-navigation"><div class="nav-next"><span class="next"><a href="/{fill["other_slug"]}/" rel="next">{esc(fill["other"])}</a></span></div></nav></footer></div></article>'
            f'{g("author", "")}{g("related", "")}<div class="comments-area">{g("comments", "")}</div></main></div><div class="widget-area sidebar is-right-sidebar" id="right-sidebar"><div class="inside-right-sidebar">{g("sidebar", "")}{g("newsletter", "")}</div></div></div></div>'
            f'<div class="site-footer">{footer_html()}</div></body></html>'
        )
        furniture.append(fill["other"])
    elif theme == "avada":
        body_markup = (
            f'<body class="post-template-default single single-post fusion-body">{g("cookie", "")}<div id="boxed-wrapper"><div id="wrapper" class="fusion-wrapper"><header class="fusion-header-wrapper"><div class="fusion-header">{nav_html()}</div></header>'
            f'<section class="avada-page-titlebar-wrapper"><div class="fusion-page-title-bar"><div class="fusion-page-title-secondary">{g("breadcrumbs", "")}</div></div></section>'
            f'<main id="main" class="clearfix"><div class="fusion-row"><section id="content"><article id="post-9" class="post type-post">'
            f'<h1 class="entry-title fusion-post-title">{t}</h1><div class="post-content">\n{content}\n</div><div class="fusion-meta-info"><div class="fusion-meta-info-wrapper">{meta}</div></div>'
            f'<div class="fusion-sharing-box fusion-theme-sharing-box">{g("share", "")}</div><section class="about-author">{g("author", "")}</section>'
            f'<section class="related-posts single-related-posts">{g("related", "")}</section><div class="fusion-comments">{g("comments", "")}</div></article></section>'
            f'{g("sidebar", "")}</div></main><div class="fusion-footer">{g("newsletter", "")}{footer_html()}</div></div></div></body></html>'
        )
    elif theme == "kadence":
        body_markup = (
            f'<body class="single single-post kadence-theme content-style-boxed">{g("cookie", "")}<div id="wrapper" class="site wp-site-blocks"><header id="masthead" class="site-header"><div class="site-header-wrap">{nav_html()}</div></header>'
            f'<div id="inner-wrap" class="wrap hfeed kt-clear"><div id="primary" class="content-area"><div class="content-container site-container"><main id="main" class="site-main">'
            f'<div class="content-wrap"><article id="post-3" class="entry content-bg single-entry post type-post"><div class="entry-content-wrap"><header class="entry-header post-title title-align-inherit">'
            f'{g("breadcrumbs", "")}<h1 class="entry-title">{t}</h1><div class="entry-meta entry-meta-divider-dot">{meta}</div></header><div class="entry-content single-content">\n{content}\n</div>'
            f'<footer class="entry-footer">{g("share", "")}</footer></div></article><div class="entry-author entry-author-style-normal">{g("author", "")}</div>'
            f'<div class="entry-related alignfull entry-related-style-wide">{g("related", "")}</div>{g("comments", "")}</div></main>{g("sidebar", "")}</div></div></div>'
            f'{g("newsletter", "")}{footer_html()}</div></body></html>'
        )
    else:  # squarespace-like
        body_markup = (
            f'<body class="collection-type-blog view-item sqs-site">{g("cookie", "").replace("cookie-notice-container", "sqs-cookie-banner-v2")}<header class="Header Header--top"><div class="Header-inner">{nav_html()}</div></header>'
            f'<main class="Main Main--blog-item"><section class="Main-content"><article class="BlogItem hentry" data-item-id="5f1a"><div class="BlogItem-title"><h1 class="entry-title">{t}</h1></div>'
            f'<div class="Blog-meta BlogItem-meta">{meta}</div><div class="sqs-layout sqs-grid-12 columns-12"><div class="row sqs-row"><div class="col sqs-col-12 span-12">'
            f'<div class="sqs-block html-block sqs-block-html"><div class="sqs-block-content">\n{content}\n</div></div>'
            f'<div class="sqs-block newsletter-block sqs-block-newsletter"><div class="sqs-block-content">{g("newsletter", "")}</div></div></div></div></div>'
            f'<div class="squarespace-social-buttons">{g("share", "")}</div><div class="BlogItem-author">{g("author", "")}</div>'
            f'<nav class="BlogItem-pagination">{g("related", "")}</nav><div class="BlogItem-comments">{g("comments", "")}</div></article></section></main>'
            f'<footer class="Footer">{footer_html()}</footer>{g("sidebar", "")}</body></html>'
        )
    return head(article, theme, i) + body_markup + "\n", body, furniture


THEMES = ["astra", "divi", "elementor", "generatepress", "avada", "kadence", "squarespace"]
ALL = list(WIDGETS)


def main() -> None:
    expectations = {}
    n = 0
    for ti, theme in enumerate(THEMES):
        for k in range(5):
            i = ti * 5 + k
            article = ARTICLES[i % len(ARTICLES)]
            other = ARTICLES[(i + 3) % len(ARTICLES)]
            picks = [w for j, w in enumerate(ALL) if (i + j) % 4 != 3 or k == 0]
            inside = [x for x, on in (("teaser", i % 2 == 0), ("newsletter", i % 3 == 1)) if on]
            fill = {"title": article["title"], "other": other["title"], "other_slug": other["slug"]}
            page, body, furniture = theme_page(theme, article, i, picks, inside, fill)
            name = f"{theme}-{k + 1}-{article['slug']}.html"
            (HERE / name).write_text(page, encoding="utf-8")
            expectations[name] = {
                "title": article["title"],
                "date": article["date"],
                "tags": article["tags"],
                "categories": article["cats"],
                "body": body,
                "media": media_md(article, i),
                "furniture": sorted(set(furniture)),
            }
            n += 1
    (HERE / "expectations.json").write_text(json.dumps(expectations, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {n} pages")


if __name__ == "__main__":
    main()
