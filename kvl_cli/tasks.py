"""What each command asks the model, and its defaults. All prompts live here.

Defaults were chosen for a small CPU, where one thinking token costs about half a second:
``caption`` and ``ocr`` cap the thinking (they rarely need long deliberation), ``ask`` keeps the
model's full thinking. ``ocr`` gives the encoder more image tokens so small print stays legible.
"""

from __future__ import annotations

from dataclasses import dataclass

CAPTION_PROMPTS = {
    "short": "Write a one-sentence caption for this image.",
    "normal": "Describe this image in a short paragraph: the subject, the setting and anything notable.",
    "long": (
        "Describe this image in detail: the main subjects, their appearance and actions, the setting, "
        "colours and lighting, any visible text, and the overall mood."
    ),
}
OCR_PROMPTS = {
    "text": (
        "Extract all the text visible in this image, exactly as written, in reading order. "
        "Keep line breaks. Output only the text, with no commentary."
    ),
    "markdown": (
        "Transcribe all the text in this image as Markdown, exactly as written, in reading order. "
        "Keep headings, lists and tables as Markdown structure. Output only the transcription."
    ),
}
VIDEO_PROMPT = (
    "These are frames from a video, in order, each preceded by its timestamp. "
    "Summarise what happens in the video, citing timestamps like [00:01:05] where useful."
)
VIDEO_QUESTION = "These are frames from a video, in order, each preceded by its timestamp. "  # + the question
SCENE_PROMPT = (
    "These frames come from one scene of a video, in order, each preceded by its timestamp. "
    "Describe the scene in one or two sentences."
)

# kvl locate: Kimi-VL's grounding is not documented; users see boxes as {"bbox_2d": [x0, y0, x1, y1]}
# and clicks as fractions of the image (MoonshotAI/Kimi-VL issues #52, #56). The answer is constrained
# to exactly this shape; the prompt says so in words the model has seen.
LOCATE_PROMPT = (
    "Locate in this image: {query}. Answer with JSON: {{\"objects\": [{{\"label\": \"...\", "
    "\"bbox_2d\": [x0, y0, x1, y1]}}]}}, one object per match, each with a short label and its bounding box "
    "as fractions of the image width and height (0 to 1, from the top-left corner). If nothing matches, "
    "answer {{\"objects\": []}}."
)
LOCATE_POINT_PROMPT = (
    "Locate in this image: {query}. Answer with JSON: {{\"objects\": [{{\"label\": \"...\", "
    "\"point_2d\": [x, y]}}]}}, one object per match, each with a short label and the point to click on it "
    "as fractions of the image width and height (0 to 1, from the top-left corner). If nothing matches, "
    "answer {{\"objects\": []}}."
)


@dataclass(frozen=True)
class TaskDefaults:
    think_budget: int | None  # None: unlimited
    max_tokens: int
    image_max_tokens: int


DEFAULTS = {
    "caption": TaskDefaults(think_budget=512, max_tokens=2048, image_max_tokens=1024),
    "ocr": TaskDefaults(think_budget=256, max_tokens=4096, image_max_tokens=2048),
    "ask": TaskDefaults(think_budget=None, max_tokens=8192, image_max_tokens=1024),
    "video": TaskDefaults(think_budget=1024, max_tokens=4096, image_max_tokens=256),
    # grounding wants detail (small buttons on a screenshot): ocr's image budget
    "locate": TaskDefaults(think_budget=512, max_tokens=4096, image_max_tokens=2048),
}


def caption_prompt(detail: str) -> str:
    return CAPTION_PROMPTS[detail]


def ocr_prompt(fmt: str) -> str:
    return OCR_PROMPTS[fmt]


def locate_prompt(query: str, *, point: bool = False) -> str:
    return (LOCATE_POINT_PROMPT if point else LOCATE_PROMPT).format(query=query)
