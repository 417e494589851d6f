"""What a person sees, in a real browser: Debian's Chromium, headless, driven by Selenium.

Log into the Airflow UI of the session's stack, trigger `helical_embedding` from
its trigger form with non-default params (a dataset folder, one model, an
output root), wait for the run to succeed, read an embed task's log in the UI,
then open the run's report.html and check that its tables and UMAP images render
without a console error. Screenshots of the run's grid and graph views, the
trigger form and the report go to $HELICAL_SCREENSHOT_DIR (default: a temp dir;
`HELICAL_SCREENSHOT_DIR=docs/img make test-stack` refreshes the README's).
"""

from __future__ import annotations

import os
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from conftest import DAG_ID, REPO, STACK_SH, poll

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
UI_MODEL = "scgpt"  # not the DAG's default (geneformer)


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("chromium/chromium-driver missing: run scripts/bootstrap.sh system")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,900", "--no-first-run", "--disable-extensions"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager (which downloads drivers) never runs.
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("HELICAL_SCREENSHOT_DIR") or tmp_path_factory.mktemp("shots"))
    folder = folder if folder.is_absolute() else REPO / folder
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _wait(driver, find, timeout: float, what: str):
    return poll(lambda: find(driver), timeout, what, interval=0.5)


def _css(selector: str):
    from selenium.webdriver.common.by import By

    return lambda d: d.find_elements(By.CSS_SELECTOR, selector)


def _replace_text(element, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(Keys.DELETE)
    element.send_keys(text)


def _screenshot(driver, path: Path) -> None:
    driver.save_screenshot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000, path


def _console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_trigger_from_the_ui_and_read_the_report(workflow, browser, shots):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    stack, work = workflow.stack, workflow.work
    base = f"http://127.0.0.1:{stack.ports['api']}"
    password = stack.admin_password()
    dataset_folder = work / "data"
    output_root = work / "out" / "ui"

    # Log in through the form.
    browser.get(base + "/")
    _wait(browser, _css("input[name=username]"), 60, "the login form")
    browser.find_element(By.CSS_SELECTOR, "input[name=username]").send_keys("admin")
    browser.find_element(By.CSS_SELECTOR, "input[name=password]").send_keys(password)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    poll(lambda: "/auth/login" not in browser.current_url, 30, "login to finish")

    # The DAG is listed, and its page has a Trigger button.
    browser.get(base + "/dags")
    _wait(browser, lambda d: DAG_ID in d.find_element(By.TAG_NAME, "body").text, 60, "the DAG list")
    browser.get(f"{base}/dags/{DAG_ID}")
    _wait(browser, _css("button[aria-label='Trigger Dag']"), 60, "the Trigger button")[0].click()

    # The trigger form, filled with non-default params.
    _wait(browser, _css("#element_datasets"), 30, "the trigger form")
    _replace_text(browser.find_element(By.ID, "element_datasets"), str(dataset_folder))
    _replace_text(browser.find_element(By.ID, "element_models"), UI_MODEL)
    _replace_text(browser.find_element(By.ID, "element_output_root"), str(output_root))
    _screenshot(browser, shots / "airflow-trigger-form.png")
    trigger = [
        b for b in browser.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Trigger"
    ]
    trigger[-1].click()  # the dialog's own button (the first is the page's)

    # The UI moves to the new run's page; its id is in the address.
    marker = f"/dags/{DAG_ID}/runs/"
    poll(lambda: marker in browser.current_url, 30, "the run page after triggering")
    run_id = urllib.parse.unquote(browser.current_url.split(marker, 1)[1].split("/")[0])
    workflow.runs["ui"] = {"run_id": run_id, "output_root": output_root}

    state = workflow.wait(run_id, 420)
    assert state == "success", workflow.logs_hint(run_id)
    run = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id, safe='')}")
    assert run["conf"]["datasets"] == [str(dataset_folder)]
    assert run["conf"]["models"] == [UI_MODEL]
    assert run["conf"]["output_root"] == str(output_root)

    # The run's grid and graph views.
    run_url = f"{base}/dags/{DAG_ID}/runs/{urllib.parse.quote(run_id, safe='')}"
    browser.get(run_url)
    _wait(browser, lambda d: "Success" in d.find_element(By.TAG_NAME, "body").text, 60, "run page")
    _screenshot(browser, shots / "airflow-run-grid.png")
    _wait(browser, _css("button[aria-label^='Show Graph']"), 30, "the graph toggle")[0].click()
    _wait(browser, _css(".react-flow__node"), 60, "the graph view")
    _screenshot(browser, shots / "airflow-run-graph.png")

    # An embed task's log, in the UI, shows the runner's summary: its "done" event
    # (JSON logs under Airflow) with the output written and the cells embedded.
    embeds = [t for t in workflow.task_instances(run_id)
              if t["task_id"].startswith("embed_") and t["state"] == "success"]  # fmt: skip
    assert embeds, workflow.logs_hint(run_id)
    task = embeds[0]
    browser.get(f"{run_url}/tasks/{task['task_id']}/mapped/{task['map_index']}")

    def summary_line() -> str | None:
        text = browser.execute_script("return document.body.textContent")
        lines = [line for line in text.split("[runner stderr]") if '"msg": "done"' in line]
        return lines[0] if lines else None

    summary = _wait(browser, lambda _: summary_line(), 90, "the runner's summary in the task log")
    assert f"/shards/{UI_MODEL}/" in summary and '"cells": ' in summary, summary
    # The log viewer's own shortcuts: w wraps long lines, f shows the log full screen.
    ActionChains(browser).send_keys("w").send_keys("f").perform()
    _wait(browser, _css("[role=dialog]"), 15, "the full-screen log")
    _screenshot(browser, shots / "airflow-task-log.png")

    # The report: tables and every image rendered, no console error.
    reports = sorted(output_root.rglob("report.html"))
    assert reports, f"no report.html under {output_root}"
    browser.get_log("browser")  # drop the UI's messages
    browser.get(reports[0].as_uri())
    _wait(browser, lambda d: d.execute_script("return document.readyState") == "complete", 30,
          "the report to load")  # fmt: skip
    images = browser.execute_script(
        "return [...document.images].map(i => [i.src.slice(0, 60), i.complete, i.naturalWidth])"
    )
    assert images, "the report has no image (UMAPs expected)"
    assert [i for i in images if not (i[1] and i[2] > 0)] == [], f"broken images: {images}"
    assert browser.execute_script("return document.querySelectorAll('table tr').length") > 1
    assert UI_MODEL in browser.find_element(By.TAG_NAME, "body").text
    assert _console_errors(browser) == []
    browser.set_window_size(1400, 1600)
    _screenshot(browser, shots / "report.png")

    # Without screenshots: one command prints where the UI, dashboards and report are.
    where = subprocess.run([str(STACK_SH), "where"], env={**stack.env, "HELICAL_OUTPUT_ROOT": str(output_root)},
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert f"http://127.0.0.1:{stack.ports['api']}" in where
    assert reports[0].as_uri() in where and where.count("Dashboard ") == 4
