"""Polls of the result and history pages answered from a dict the test changes, instead of from the server."""
import json
import re


def polls_answered_from(page, prediction, answer: dict) -> None:
    """The page's polls for ``prediction`` (the result page's, alone; the history page's, with its other rows) are
    answered from ``answer``, read afresh at each poll."""
    page.route(f"**/predictions/{prediction.pk}.json",
               lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(answer)))
    page.route(re.compile(r"/predictions\.json\?"),
               lambda route: route.fulfill(status=200, content_type="application/json",
                                           body=json.dumps({"predictions": [answer]})))
