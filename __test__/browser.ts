// playwright-core's types name DOM types (Element, HTMLElement); the project's lib is ES2022 only.
/// <reference lib="dom" />
/**
 * Opening a report page in Debian's chromium (driven by playwright-core), offline, for the tests
 * of the demo's and the protocols' HTML reports. CI must have chromium (it installs it); a
 * developer without it gets the browser tests skipped, by name.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import test, { type ExecutionContext } from 'ava'
import type { Page } from 'playwright-core'

export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'

export interface OpenedPage {
  page: Page
  /** Console errors and uncaught page errors. */
  problems: string[]
  warnings: string[]
  /** Requests that left the machine (the pages must need no network). */
  remote: string[]
}

/** Opens `path` in headless chromium, waits until every chart has rendered (or failed, with a
 *  console error), and runs `check` on the page. */
export async function withReportPage(path: string, check: (opened: OpenedPage) => Promise<void>): Promise<void> {
  const { chromium } = await import('playwright-core')
  const dir = mkdtempSync(join(tmpdir(), 'promptclip-browser-'))
  const context = await chromium.launchPersistentContext(join(dir, 'profile'), {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    viewport: { width: 1200, height: 900 },
  })
  try {
    const page = context.pages()[0] ?? (await context.newPage())
    const opened: OpenedPage = { page, problems: [], warnings: [], remote: [] }
    page.on('console', (msg) => {
      if (msg.type() === 'error') opened.problems.push(`console.error: ${msg.text()}`)
      else if (msg.type() === 'warning') opened.warnings.push(msg.text())
    })
    page.on('pageerror', (err) => opened.problems.push(`page error: ${err.message}`))
    page.on('request', (req) => {
      if (!/^(file|data):/.test(req.url())) opened.remote.push(req.url())
    })
    await page.goto(`file://${path}`, { waitUntil: 'load' })
    // The page marks <body> once every chart has rendered (or failed, with a console error).
    await page.waitForSelector('body[data-charts="done"]')
    await check(opened)
  } finally {
    await context.close()
    rmSync(dir, { recursive: true, force: true })
  }
}

/** The marks a chart drew (counted with locators: tsx's __name() helper does not exist in pages). */
export async function chartMarks(page: Page, id: string) {
  const count = (sel: string) => page.locator(`#${id} svg ${sel}`).count()
  return {
    svg: (await page.locator(`#${id} > svg`).count()) === 1,
    bars: await count('.mark-rect.role-mark path'),
    rules: await count('.mark-rule.role-mark line'),
    points: await count('.mark-symbol.role-mark path'),
    lines: await count('.mark-line.role-mark path'),
    areas: await count('.mark-area.role-mark path'),
    texts: await count('.mark-text.role-mark text'),
  }
}

/** A test that needs chromium: run where it is, fail on CI without it, skip (by name) elsewhere. */
export function browserTest(title: string, body: (t: ExecutionContext) => Promise<void>): void {
  if (existsSync(CHROMIUM)) test(title, body)
  else if (process.env.CI) {
    test(title, (t) => {
      t.fail(
        `chromium not found at ${CHROMIUM}: CI must run this test (apt-get install chromium, or set CHROMIUM_PATH)`,
      )
    })
  } else test.skip(`${title} (skipped: no chromium at ${CHROMIUM}; apt-get install chromium)`, () => {})
}
